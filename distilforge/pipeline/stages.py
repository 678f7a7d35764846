"""The stages after the data: train, evaluate (the teacher too, through the run's budget), report."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.journal import journal_totals
from distilforge.core.run_files import read_run, update_run, write_atomic
from distilforge.pipeline.run_report import current_invocation, money
from distilforge.pipeline.steps import RunControl
from distilforge.schemas import JobConfig


def report_stage(run_dir: Path, console: Console) -> None:
    from distilforge.report import build_report

    with contextlib.suppress(FileNotFoundError):
        build_report(run_dir)


def train_stage(config: JobConfig, run_dir: Path, control: RunControl, console: Console, *,
                resume: bool = False) -> dict[str, Any]:
    from distilforge.trainers import train_student

    # auto is settled by the student's size once it is loaded; the closing table names the method used.
    method = "auto: full below 1B parameters, LoRA above" if config.train.method == "auto" else config.train.method
    console.print(f"[bold]training[/bold] {config.train.student} ({method}) on {run_dir / 'dataset'}")
    summary = train_student(config, run_dir, should_stop=lambda: bool(control.stop_reason() or control.lost()),
                            resume=resume)
    return update_run(run_dir, train=summary)


def eval_stage(config: JobConfig, run_dir: Path, control: RunControl, console: Console, *, trained: bool) -> dict[str, Any]:
    """Score the student before/after (and the teacher if asked); records `eval` in run.json."""
    from distilforge.evaluation import evaluate_model, load_eval_questions

    questions = load_eval_questions(config, run_dir)
    if not questions:
        console.print("[yellow]eval skipped[/yellow]: no eval.files configured and no validation rows with gold")
        return read_run(run_dir)
    run = read_run(run_dir)
    results = dict(run.get("eval") or {})

    def scored(label: str, **model: Any) -> dict[str, Any]:
        """One model's accuracy; each question's result goes to RUN_DIR/eval/LABEL.jsonl (for paired comparisons)."""
        summary = evaluate_model(config, questions, label=f"eval {label}", console=console, details=True, **model)
        folder = run_dir / "eval"
        folder.mkdir(exist_ok=True)
        write_atomic(folder / f"{label}.jsonl", "".join(json.dumps(r) + "\n" for r in summary.pop("results")))
        return summary

    if "before" not in results or results["before"].get("n") != len(questions):
        results["before"] = scored("before", model=config.train.student)
        run = update_run(run_dir, eval=results)
    student = run_dir / "student"
    if (student / "adapter_config.json").exists():
        results["after"] = scored("after", model=config.train.student, adapter=str(student))
    elif (student / "config.json").exists():
        results["after"] = scored("after", model=str(student))
    sections: dict[str, Any] = {}
    if config.eval.teacher and results.get("teacher", {}).get("n") != len(questions):
        results["teacher"], sections = asyncio.run(_eval_teacher(config, run_dir, control, questions))
    if results.get("teacher") and results.get("after") and results["teacher"]["accuracy"]:
        results["student_vs_teacher"] = round(results["after"]["accuracy"] / results["teacher"]["accuracy"], 4)
    return update_run(run_dir, eval=results, **sections)


async def _eval_teacher(config: JobConfig, run_dir: Path, control: RunControl,
                        questions: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher's eval goes through the run's budget (cap included) and rank 0's journal."""
    from distilforge.evaluation.accuracy import eval_teacher_config, evaluate_teacher
    from distilforge.pipeline.rank import open_rank
    from distilforge.teachers.sampler import open_sampler

    spent, _ = journal_totals(run_dir)
    budget = control.budget(config, spent)
    try:
        async with open_rank(config, run_dir, budget, control) as ctx:
            sampler = await open_sampler(ctx, "eval_teacher", eval_teacher_config(config), stage="eval_teacher")
            summary = await evaluate_teacher(config, questions, sampler)
    finally:
        await budget.close()
    stage = sampler.stats.report()
    stage["cost_usd"] = round(budget.by_stage.get("eval_teacher", 0.0), 6)
    current_invocation(run_dir, budget.prices is not None).add(budget)
    # Its part of run.json; RunReport.merge adds its requests and unknown-outcome charges to the run's.
    sections = {"stages": {"eval_teacher": stage}, "requests": stage["requests"], **money(run_dir),
                "budget": budget.report()}
    return summary, sections
