"""Accuracy of a local model on held-out questions, with a bootstrap 95% interval."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.formats import LABEL_PREFIX
from distilforge.core.grading import canonical, grade, split_answer
from distilforge.core.reasoning import split_reasoning
from distilforge.core.seeds import SeedError, read_questions
from distilforge.pipeline.progress import LogLines, progress_bar
from distilforge.prompts import build_messages
from distilforge.schemas import JobConfig, TeacherConfig
from distilforge.schemas.evaluation import EvalResult, EvalRow, EvalScore
from distilforge.schemas.records import Seed
from distilforge.teachers.sampler import Sampler, sample_many


def validation_questions(run_dir: Path, limit: int | None) -> list[tuple[str, Seed]]:
    """The dataset's held-out split, where its rows have gold answers."""
    import datasets

    path = run_dir / "dataset"
    if not path.exists():
        return []
    splits = datasets.load_from_disk(str(path))
    if not isinstance(splits, datasets.DatasetDict) or "validation" not in splits:
        return []
    rows = splits["validation"]
    out = []
    for row in rows.select(range(min(len(rows), limit or len(rows)))):
        if row.get("gold") is not None and row.get("answer_type") in ("number", "yes_no", "choice", "text"):
            out.append(("validation", Seed(seed_id=row["seed_id"], question=row["question"], gold=row["gold"],
                                           answer_type=row["answer_type"], source="validation")))
    return out


def load_eval_questions(config: JobConfig, run_dir: Path | None = None) -> list[tuple[str, Seed]]:
    """(eval set name, question) pairs from `eval.files` (each needs gold answers) and the validation split."""
    questions: list[tuple[str, Seed]] = []
    if run_dir is not None and config.eval.include_validation and config.generation.mode in ("cot", "icl"):
        questions += validation_questions(run_dir, config.eval.limit)
    for f in config.eval.files:
        name = f.name or Path(f.path).stem
        limit = min(x for x in (f.limit, config.eval.limit, 10**12) if x is not None)
        if f.fields.answer is None:
            raise SeedError(f"{f.path}: eval files need gold answers (eval.files[].fields.answer)")
        for seed in read_questions(f.path, f.fields, limit=limit, answer_type=config.generation.answer_type):
            questions.append((name, seed))
    return questions


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval: honest at 0 % and 100 %, where resampling only ever gives the same value."""
    if not n:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(correct: list[bool], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    if not correct:
        return (0.0, 0.0)
    if all(correct) or not any(correct):  # 0 % or 100 %: every resample is the same; Wilson's interval
        return wilson_interval(sum(correct), len(correct))
    rng = random.Random(seed)
    n = len(correct)
    values = sorted(sum(rng.choices(correct, k=n)) / n for _ in range(resamples))
    return values[int(0.025 * resamples)], values[min(resamples - 1, int(0.975 * resamples))]


def eval_prompt(config: JobConfig, question: Seed, *, student: bool = True) -> list[dict[str, str]]:
    """The student is asked as it was trained: the bare question (`generation.student_prompt: question`)
    or the chain-of-thought prompt on it (`template`), with the label-task prefix for a step-by-step
    student. The teacher (`student=False`) is asked with the chain-of-thought prompt."""
    generation = config.generation
    if student and generation.student_prompt == "question":
        messages = [*(question.context or []), {"role": "user", "content": question.question}]
    else:
        if generation.mode != "cot":
            generation = generation.model_copy(update={"mode": "cot", "template": None})
        messages = list(build_messages(question, generation))
        if student:  # generation.system_prompt is the teacher's alone
            messages = [*(question.context or []), messages[-1]]
    if config.train.format == "step-by-step":
        messages[-1] = {"role": "user", "content": LABEL_PREFIX + messages[-1]["content"]}
    return messages


def score(name: str, question: Seed, text: str) -> dict[str, Any]:
    """One answer, judged with the filters' parser and equivalence rules. A thinking student is judged on
    its final answer: what it states inside an unfinished think block does not count."""
    text, _ = split_reasoning(text)
    _, raw = split_answer(text)
    answer = canonical(raw, question.answer_type) if raw is not None else None
    correct = grade(raw, question.gold, question.answer_type)
    return EvalRow(set=name, seed_id=question.seed_id, gold=question.gold, answer=answer,
                   correct=correct).model_dump(exclude_unset=True)


def evaluate_model(
    config: JobConfig,
    questions: list[tuple[str, Seed]],
    *,
    model: str,
    adapter: str | None = None,
    label: str = "eval",
    console: Console | None = None,
    details: bool = False,
) -> dict[str, Any]:
    """Greedy answers from a local `model` (+ LoRA `adapter`), batched, scored per eval set and overall.

    `details`: also return each question's result (`results`: set, seed_id, gold, the parsed answer, correct
    and the completion), for the targeted rounds and for reading what the student got wrong.
    """
    from distilforge.teachers.local import LocalTeacher

    console = console or Console(stderr=True)
    started = time.monotonic()
    student = LocalTeacher(
        model, temperature=0.0, max_tokens=config.eval.max_tokens,
        batch_size=config.eval.batch_size, device=config.teacher.device, adapter=adapter,
    )
    student.load()
    results: list[dict[str, Any]] = []
    size = config.eval.batch_size
    lines = LogLines(console, label, len(questions), "questions")
    with progress_bar(console) as progress:
        task = progress.add_task(label, total=len(questions))
        for start in range(0, len(questions), size):
            chunk = questions[start : start + size]
            responses = student.generate_batch([(eval_prompt(config, q), 1) for _, q in chunk])
            for (name, q), resp in zip(chunk, responses, strict=True):
                text = resp.completions[0].text
                results.append({**score(name, q, text), "completion": text})
            progress.update(task, advance=len(chunk))
            lines.update(len(results), final=len(results) == len(questions))
    result = eval_result(results, seconds=time.monotonic() - started, model=model, adapter=adapter)
    if details:
        result["results"] = results
    return result


def eval_teacher_config(config: JobConfig) -> TeacherConfig:
    """The teacher as evaluated: greedy, with room for the eval's answers."""
    teacher = config.teacher.model_copy(deep=True)
    teacher.params.temperature = 0.0
    teacher.params.max_tokens = max(config.eval.max_tokens, teacher.params.max_tokens)
    return teacher


async def evaluate_teacher(config: JobConfig, questions: list[tuple[str, Seed]], sampler: Sampler) -> dict[str, Any]:
    """The teacher on the same questions (greedy), for the student-vs-teacher ratio.

    Its requests go through `sampler` (stage eval_teacher of the run's budget and journal); a question
    whose request failed or was not sent counts as a wrong answer, and is counted as such.
    """
    started = time.monotonic()
    asks = [(f"eval:{name}:{q.seed_id}", eval_prompt(config, q, student=False)) for name, q in questions]
    outcomes = await sample_many(sampler, asks)
    texts = [o.samples[0].completion.text if o.samples else "" for o in outcomes]
    results = [score(name, q, text) for (name, q), text in zip(questions, texts, strict=True)]
    unanswered = sum(1 for o in outcomes if not o.samples)
    return eval_result(results, seconds=time.monotonic() - started, model=config.teacher.model, adapter=None,
                       unanswered=unanswered)


def eval_result(results: list[dict[str, Any]], *, seconds: float, model: str, adapter: str | None,
              unanswered: int = 0) -> dict[str, Any]:
    """run.json's eval block for one model (`EvalResult`); `unanswered` appears only when some were."""
    def block(rows: list[dict[str, Any]]) -> EvalScore:
        correct = [r["correct"] for r in rows]
        low, high = bootstrap_interval(correct)
        n = len(correct)
        # How many answers the grader could read at all: a student that never states an answer in the
        # trained form scores 0 for a different reason than one that states wrong answers.
        parsed = sum(r.get("answer") is not None for r in rows)
        return EvalScore(n=n, correct=sum(correct), accuracy=round(sum(correct) / n, 4) if n else 0.0,
                         ci95=[round(low, 4), round(high, 4)], parsed=parsed)

    by_set: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["set"], []).append(r)
    result = EvalResult(model=model, adapter=adapter, **block(results).model_dump(),
                        sets={name: block(rows) for name, rows in by_set.items()}, seconds=round(seconds, 2),
                        **({"unanswered": unanswered} if unanswered else {}))
    return result.model_dump(exclude_unset=True)
