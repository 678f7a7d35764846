"""Accuracy of a local model on held-out questions, with a bootstrap 95% interval."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.pipeline.answers import answers_match, canonical, split_answer
from distilforge.pipeline.progress import progress_bar
from distilforge.pipeline.seeds import SeedError, read_seeds
from distilforge.prompts import build_messages
from distilforge.schemas.config import JobConfig
from distilforge.schemas.records import Seed
from distilforge.trainers.formats import LABEL_PREFIX


def load_eval_questions(config: JobConfig) -> list[tuple[str, Seed]]:
    """(eval set name, question) pairs from `eval.files`; each file needs gold answers."""
    questions: list[tuple[str, Seed]] = []
    for f in config.eval.files:
        name = f.name or Path(f.path).stem
        limit = min(x for x in (f.limit, config.eval.limit, 10**12) if x is not None)
        if f.fields.answer is None:
            raise SeedError(f"{f.path}: eval files need gold answers (eval.files[].fields.answer)")
        for seed in read_seeds(f.path, f.fields, limit=limit, answer_type=config.generation.answer_type):
            questions.append((name, seed))
    return questions


def bootstrap_interval(correct: list[bool], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    if not correct:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(correct)
    values = sorted(sum(rng.choices(correct, k=n)) / n for _ in range(resamples))
    return values[int(0.025 * resamples)], values[min(resamples - 1, int(0.975 * resamples))]


def evaluate_model(
    config: JobConfig,
    questions: list[tuple[str, Seed]],
    *,
    model: str,
    adapter: str | None = None,
    label: str = "eval",
    console: Console | None = None,
) -> dict[str, Any]:
    """Greedy answers from `model` (+ LoRA `adapter`), scored per eval set and overall."""
    from distilforge.teachers.local import LocalTeacher

    console = console or Console(stderr=True)
    started = time.monotonic()
    student = LocalTeacher(
        model, temperature=0.0, max_tokens=config.eval.max_tokens,
        batch_size=config.eval.batch_size, device=config.teacher.device, adapter=adapter,
    )
    student.load()
    # The student is asked as it was trained: the chain-of-thought prompt on the bare question.
    generation = config.generation
    if generation.mode != "cot":
        generation = generation.model_copy(update={"mode": "cot", "template": None})
    prefix = LABEL_PREFIX if config.train.format == "step-by-step" else ""
    results: list[dict[str, Any]] = []
    size = config.eval.batch_size
    with progress_bar(console) as progress:
        task = progress.add_task(label, total=len(questions))
        for start in range(0, len(questions), size):
            chunk = questions[start : start + size]
            prompts = []
            for _, q in chunk:
                messages = build_messages(q, generation)
                messages[-1] = {"role": "user", "content": prefix + messages[-1]["content"]}
                prompts.append((messages, 1))
            responses = student.generate_batch(prompts)
            for (name, q), resp in zip(chunk, responses, strict=True):
                text = resp.completions[0].text
                _, raw = split_answer(text)
                answer = canonical(raw, q.answer_type) if raw is not None else None
                results.append({"set": name, "seed_id": q.seed_id, "gold": q.gold, "answer": answer,
                                "correct": answers_match(answer, q.gold)})
            progress.update(task, advance=len(chunk))
    return summarize(results, seconds=time.monotonic() - started, model=model, adapter=adapter)


def summarize(results: list[dict[str, Any]], *, seconds: float, model: str, adapter: str | None) -> dict[str, Any]:
    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        correct = [r["correct"] for r in rows]
        low, high = bootstrap_interval(correct)
        n = len(correct)
        return {"n": n, "correct": sum(correct), "accuracy": round(sum(correct) / n, 4) if n else 0.0,
                "ci95": [round(low, 4), round(high, 4)]}

    by_set: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["set"], []).append(r)
    return {
        "model": model,
        "adapter": adapter,
        **block(results),
        "sets": {name: block(rows) for name, rows in by_set.items()},
        "seconds": round(seconds, 2),
    }
