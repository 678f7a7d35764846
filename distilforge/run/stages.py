"""The stages after the data: train and evaluate. Shared by the CLI and the service's workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.config import JobConfig


def train_stage(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Fine-tune the student on RUN_DIR/dataset; records `train` in run.json."""
    from distilforge.core.run_files import update_run
    from distilforge.trainers import train_student

    console.print(f"[bold]training[/bold] {config.train.student} ({config.train.method}) on {run_dir / 'dataset'}")
    summary = train_student(config, run_dir)
    return update_run(run_dir, train=summary)


def eval_stage(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Score the student before/after (and the teacher if asked); records `eval` in run.json."""
    from distilforge.core.run_files import read_run, update_run
    from distilforge.evaluation import evaluate_model, load_eval_questions

    questions = load_eval_questions(config, run_dir)
    if not questions:
        console.print("[yellow]eval skipped[/yellow]: no eval.files configured and no validation rows with gold")
        return read_run(run_dir)
    run = read_run(run_dir)
    results = dict(run.get("eval") or {})
    if "before" not in results or results["before"].get("n") != len(questions):
        results["before"] = evaluate_model(config, questions, model=config.train.student, label="eval before", console=console)
        run = update_run(run_dir, eval=results)
    student = run_dir / "student"
    if (student / "adapter_config.json").exists():
        results["after"] = evaluate_model(config, questions, model=config.train.student, adapter=str(student),
                                          label="eval after", console=console)
    elif (student / "config.json").exists():
        results["after"] = evaluate_model(config, questions, model=str(student), label="eval after", console=console)
    if config.eval.teacher and results.get("teacher", {}).get("n") != len(questions):
        from distilforge.evaluation import evaluate_teacher

        results["teacher"] = evaluate_teacher(config, questions)
    if results.get("teacher") and results.get("after") and results["teacher"]["accuracy"]:
        results["student_vs_teacher"] = round(results["after"]["accuracy"] / results["teacher"]["accuracy"], 4)
    return update_run(run_dir, eval=results)
