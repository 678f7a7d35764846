"""The one run lifecycle: `run_job(config, run_dir, control)`, called by the CLI and the service alike.

Order: check every input (nothing written yet) -> generate (executor: ranks over seed shards, then
the global filters over all kept records) -> dataset, run.json, card -> train -> eval -> publish ->
report. This module alone decides which stage runs after which outcome, and what the outcome is
called (`status`) and what exit code it maps to.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import Budget
from distilforge.core.config import JobConfig
from distilforge.core.dataset import (
    FAILED_COLUMNS,
    REJECTED_COLUMNS,
    JsonlSink,
    jsonl_to_dataset,
    sorted_rows,
    write_dataset,
    write_sorted_jsonl,
)
from distilforge.core.journal import journal_totals, shard_path
from distilforge.core.progress import ProgressView
from distilforge.core.records import Record
from distilforge.core.run_files import read_run, snapshot_config, update_run
from distilforge.core.steps import Progress, RankContext, RunControl, StepStats, aiter_of, chain, use_context
from distilforge.run.checks import Facts, check_inputs
from distilforge.run.executor import LocalExecutor, RankResult, merge_results, rejected_by_reason, staging_dir
from distilforge.run.pipeline import Pipeline, build_pipeline
from distilforge.teachers import display_model
from distilforge.teachers.sampler import StageStats

ALL_STAGES = ("generate", "train", "eval", "publish", "report")
EXIT_CODES = {"completed": 0, "stopped": 0, "cancelled": 0, "lease_lost": 0, "failed": 1, "interrupted": 130}
# When several reasons stopped a run, the one that says most about what happens next wins.
_STOP_ORDER = ("lease_lost", "interrupted", "cancelled", "budget")


@dataclass
class JobResult:
    run: dict[str, Any]
    status: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def make_executor(config: JobConfig) -> Any:
    if config.executor.kind == "ray":
        from distilforge.run.ray import RayExecutor

        return RayExecutor(config.executor)
    return LocalExecutor()


def _prefetch_imports() -> None:
    """Import the dataset writer's libraries on a thread while the first requests are in flight."""
    import os
    if os.environ.get("NOPREFETCH"):
        return

    def load() -> None:
        with contextlib.suppress(Exception):
            import datasets  # noqa: F401

    threading.Thread(target=load, name="prefetch-imports", daemon=True).start()


def _migrate_legacy_journal(run_dir: Path) -> None:
    """Run folders of earlier versions kept one journal.sqlite: it becomes rank 0's shard."""
    legacy = run_dir / "journal.sqlite"
    target = shard_path(run_dir, 0)
    if legacy.exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{legacy}{suffix}")
            if src.exists():
                src.replace(Path(f"{target}{suffix}"))


class _Driver:
    """Stops and signals for the generate stage: Ctrl-C, the embedding process's control, the lease."""

    def __init__(self, executor: Any, control: RunControl, progress: Progress, console: Console):
        self.executor, self.control, self.progress, self.console = executor, control, progress, console
        self.interrupts = 0
        self.task: asyncio.Task[Any] | None = None

    def on_sigint(self) -> None:
        self.interrupts += 1
        self.executor.stop("interrupted")
        if self.interrupts == 1:
            self.console.print("[yellow]stopping[/yellow]: no new requests; waiting for those in flight "
                               "(Ctrl-C again to abandon them; they will be re-sent on resume)")
        elif self.task is not None:
            self.task.cancel()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.control.report(self.progress.snapshot())
            if self.control.lost():
                self.executor.stop("lease_lost")
                if self.task is not None:
                    self.task.cancel()
                return
            reason = self.control.stop_reason()
            if reason:
                self.executor.stop(reason)


async def _global_stage(pipeline: Pipeline, run_dir: Path, kept: list[Path], budget: Budget,
                        control: RunControl) -> tuple[Path, Path, dict[str, StepStats]]:
    """Stage 2: the global filters over every rank's kept records in seed_id order."""
    folder = run_dir / ".staging" / "global"
    kept_sink = JsonlSink(folder / "kept.jsonl", REJECTED_COLUMNS)
    rejected_sink = JsonlSink(folder / "rejected.jsonl", REJECTED_COLUMNS)
    ctx = RankContext(pipeline.config, run_dir, 0, 1, None, budget, control, Progress(),
                      reject=rejected_sink.write, fail=lambda *_: None)
    try:
        with use_context(ctx):
            records = (Record.from_row(row) for row in sorted_rows(kept, folder))
            async for record in chain(aiter_of(records), list(pipeline.global_filters)):
                kept_sink.write(record)
    finally:
        await ctx.aclose()
        kept_sink.close()
        rejected_sink.close()
    return kept_sink.path, rejected_sink.path, ctx.stats


def _status(stop_reasons: list[str], stages: dict[str, StageStats]) -> tuple[str, str, str | None]:
    """(status, stopped, error) of the generate stage."""
    stopped = next((r for r in _STOP_ORDER if r in stop_reasons), stop_reasons[0] if stop_reasons else None)
    gen = stages.get("generate") or StageStats()
    answered = gen.samples_new + gen.samples_from_journal + gen.succeeded
    if stopped in (None, "cancelled") and not answered and gen.samples_failed:
        # Requests were needed and none was answered: not a completed run, whatever was written.
        return "failed", stopped or "failed", gen.first_error
    if stopped is None:
        return "completed", "done", None
    status = {"budget": "stopped", "interrupted": "interrupted", "cancelled": "cancelled",
              "lease_lost": "lease_lost"}.get(stopped, "stopped")
    return status, stopped, None


def _stages_report(stages: dict[str, StageStats], budget: Budget) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """run.json's per-stage blocks, and requests and tokens summed over every stage."""
    per_stage: dict[str, Any] = {}
    total = StageStats()
    for name, stats in stages.items():
        block = stats.report()
        block["cost_usd"] = round(budget.by_stage.get(name, 0.0), 6)
        per_stage[name] = block
        total.merge(stats)
    report = total.report()
    return per_stage, report["requests"], report["tokens"]


def _cost(budget: Budget, stages: dict[str, StageStats]) -> tuple[float | None, dict[str, float]]:
    """This run's spend, and its split by stage (every stage that ran, also those that paid nothing)."""
    by_stage = {name: round(budget.by_stage.get(name, 0.0), 6) for name in [*stages, *budget.by_stage]}
    return (round(budget.spent_this_run, 6) if budget.prices is not None else None), by_stage


async def _generate(config: JobConfig, run_dir: Path, control: RunControl, console: Console, executor: Any,
                    facts: Facts) -> dict[str, Any]:
    started = time.monotonic()
    pipeline = build_pipeline(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    _migrate_legacy_journal(run_dir)
    shutil.rmtree(run_dir / ".staging" / "global", ignore_errors=True)  # ranks clear (or reuse) their own
    spent, orphans = journal_totals(run_dir)
    budget = control.budget(config, spent)
    snapshot_config(config, run_dir)
    progress = Progress(total=facts.expected)
    driver = _Driver(executor, control, progress, console)
    driver.task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    # Only the main thread of a POSIX process takes signals (a service worker runs jobs in threads
    # and stops them through its RunControl instead).
    handles_sigint = sys.platform != "win32" and threading.current_thread() is threading.main_thread()
    g = config.generation
    console.print(f"[dim]{facts.n_seeds} seeds x {g.samples_per_seed} samples; teacher "
                  f"{config.teacher.backend}:{display_model(config.teacher)}"
                  + (f"; {executor.kind} executor, {executor.workers} ranks" if executor.kind != "local" else "")
                  + (f"; budget ${budget.spent:.4f} of ${config.budget.max_usd} spent" if config.budget.max_usd else "")
                  + "[/dim]")
    results: list[RankResult] = []
    try:
        if handles_sigint:
            loop.add_signal_handler(signal.SIGINT, driver.on_sigint)
        with ProgressView(console, progress) as view:
            watcher = asyncio.create_task(driver.watch())
            painter = asyncio.create_task(view.keep_fresh())
            try:
                results = await executor.run(pipeline, run_dir, budget, control, progress)
            except asyncio.CancelledError:
                if not (driver.interrupts >= 2 or control.lost()):
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                results = list(getattr(executor, "results", []))
                executor.stop("interrupted" if driver.interrupts >= 2 else "lease_lost")
            finally:
                watcher.cancel()
                painter.cancel()
    finally:
        if handles_sigint:
            loop.remove_signal_handler(signal.SIGINT)
    if control.lost():
        return {"status": "lease_lost", "stopped": "lease_lost"}

    steps, stages = merge_results(results, [s.name for s in pipeline.steps])
    stop_reasons = sorted({r for result in results for r in result.stop_reasons} | set(getattr(executor, "stop_reasons", [])))
    if driver.interrupts and "interrupted" not in stop_reasons:
        stop_reasons.append("interrupted")
    ranks = list(range(getattr(executor, "workers", 1)))
    kept = [staging_dir(run_dir, r) / "kept.jsonl" for r in ranks]
    rejected = [staging_dir(run_dir, r) / "rejected.jsonl" for r in ranks]
    failed = [staging_dir(run_dir, r) / "failed.jsonl" for r in ranks]
    if pipeline.global_filters:
        kept_path, rejected_path, global_stats = await _global_stage(pipeline, run_dir, kept, budget, control)
        kept, rejected = [kept_path], [*rejected, rejected_path]
        for name, stats in global_stats.items():
            steps.setdefault(name, StepStats(name)).merge(stats)
    control.check()  # a worker that lost its lease must not write the run's final files
    splits = await asyncio.to_thread(write_dataset, kept, run_dir, config.output.validation_fraction, g.rng_seed)
    n_rejected = await asyncio.to_thread(jsonl_to_dataset, rejected, REJECTED_COLUMNS, run_dir / "rejected",
                                         run_dir / "parquet" / "rejected.parquet")
    n_failed = await asyncio.to_thread(write_sorted_jsonl, failed, FAILED_COLUMNS, run_dir / "failed.jsonl")

    status, stopped, error = _status(stop_reasons, stages)
    dead = [r for r in results if r.error]
    if dead:  # a rank died (a killed Ray worker): its shard is incomplete; a rerun resumes it from its journal
        status, stopped, error = "failed", stopped, "; ".join(f"rank {r.rank}: {r.error}" for r in dead)
    per_stage, requests, tokens = _stages_report(stages, budget)
    gen = stages.get("generate") or StageStats()
    cost, by_stage = _cost(budget, stages)
    not_sent = sum(r.not_sent for r in results)
    filters = [stats.report() for name, stats in steps.items() if _is_filter(pipeline, name)]
    summary: dict[str, Any] = {
        "name": config.name,
        "status": status,
        "stopped": stopped,
        "error": error,
        "mode": g.mode,
        "teacher": {"backend": config.teacher.backend, "model": display_model(config.teacher),
                    "params": config.teacher.params.model_dump(mode="json", exclude_none=True)},
        "seeds": {"path": Path(config.seeds.path).name, "count": facts.n_seeds},
        "executor": {"kind": executor.kind, "workers": getattr(executor, "workers", 1),
                     "reused_ranks": [r.rank for r in results if r.reused],
                     "ranks": [{"rank": r.rank, "seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "kept": r.kept}
                               for r in results]},
        "samples": {"expected": facts.expected, "from_journal": gen.samples_from_journal, "new": gen.samples_new,
                    "failed": n_failed - not_sent, "not_sent": not_sent},
        "requests_saved": steps.get("generate", StepStats("generate")).counters.get("requests_saved", 0),
        "requests": requests,
        "tokens": tokens,
        "stages": per_stage,
        "cost_usd": cost,
        "cost_by_stage": by_stage,
        "budget": {**budget.report(), "orphaned_requests": orphans},
        "kept": sum(splits.values()),
        "rejected": dict(rejected_by_reason(steps)),
        "filters": filters,
        "steps": [stats.report() for stats in steps.values()],
        "wall_seconds": per_stage.get("generate", {}).get("wall_seconds", 0.0),
        "total_seconds": round(time.monotonic() - started, 3),
        "notes": sorted({note for result in results for note in result.notes}),
    }
    for result in results:
        summary.update(result.sections)
    assert n_rejected == sum(summary["rejected"].values()), (n_rejected, summary["rejected"])
    run = update_run(run_dir, **summary)
    from distilforge.publish import write_card

    await asyncio.to_thread(write_card, config, run_dir, splits)
    if status == "completed":  # otherwise a rerun reuses the shards its ranks completed
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)
    return run


def _is_filter(pipeline: Pipeline, name: str) -> bool:
    steps = {s.name: s for s in [*pipeline.steps, *pipeline.global_filters]}
    step = steps.get(name)
    return step is None or getattr(step, "rejects", False)


def run_job(config: JobConfig, run_dir: Path, control: RunControl | None = None, *, console: Console | None = None,
            stages: tuple[str, ...] = ALL_STAGES, executor: Any = None) -> JobResult:
    """Run `stages` of a job in `run_dir`. Input errors raise (nothing written); outcomes are a status."""
    console = console or Console(stderr=True)
    control = control or RunControl()
    explicit = len(stages) == 1  # `distilforge train DIR`: the stage was asked for by name
    started = time.monotonic()
    facts = check_inputs(config, stages)
    if "generate" in stages:
        _prefetch_imports()
        run = asyncio.run(_generate(config, run_dir, control, console, executor or make_executor(config), facts))
        status = run["status"]
        if status in ("interrupted", "lease_lost", "failed", "cancelled"):
            if status not in ("lease_lost",) and "report" in stages:
                _report(run_dir, console)
            return JobResult(run, status)
    else:
        run = read_run(run_dir)
        status = run.get("status", "completed")
    trained = False
    if "train" in stages and (explicit or config.train.enabled):
        if not run.get("kept") and not explicit:
            console.print("[yellow]training skipped[/yellow]: nothing was kept to train on")
            run = update_run(run_dir, train={"skipped": "no kept records to train on"})
        else:
            control.check()
            run = _train(config, run_dir, control, console)
            trained = True
    if "eval" in stages and (explicit or config.train.enabled):
        control.check()
        run = _eval(config, run_dir, control, console, trained=trained)
    if "publish" in stages and config.output.hub_repo and status == "completed":
        from distilforge.publish import PublishError, publish_dataset

        control.check()
        try:
            # The service checked the repo against DISTILFORGE_HUB_REPOS when the job was submitted.
            run = update_run(run_dir, published=publish_dataset(run_dir, config.output.hub_repo,
                                                                private=config.output.private))
        except PublishError as exc:
            update_run(run_dir, published={"error": str(exc)})
            if "report" in stages:
                _report(run_dir, console)
            raise
    if "generate" in stages:
        run = update_run(run_dir, total_seconds=round(time.monotonic() - started, 3))
    if "report" in stages:
        _report(run_dir, console)
    return JobResult(run, status)


def _report(run_dir: Path, console: Console) -> None:
    from distilforge.report import build_report

    with contextlib.suppress(FileNotFoundError):
        build_report(run_dir)


def _train(config: JobConfig, run_dir: Path, control: RunControl, console: Console) -> dict[str, Any]:
    from distilforge.trainers import train_student

    console.print(f"[bold]training[/bold] {config.train.student} ({config.train.method}) on {run_dir / 'dataset'}")
    summary = train_student(config, run_dir, should_stop=lambda: bool(control.stop_reason() or control.lost()))
    return update_run(run_dir, train=summary)


def _eval(config: JobConfig, run_dir: Path, control: RunControl, console: Console, *, trained: bool) -> dict[str, Any]:
    """Score the student before/after (and the teacher if asked); records `eval` in run.json."""
    from distilforge.evaluation import evaluate_model, load_eval_questions

    questions = load_eval_questions(config, run_dir)
    if not questions:
        console.print("[yellow]eval skipped[/yellow]: no eval.files configured and no validation rows with gold")
        return read_run(run_dir)
    run = read_run(run_dir)
    results = dict(run.get("eval") or {})
    if "before" not in results or results["before"].get("n") != len(questions):
        results["before"] = evaluate_model(config, questions, model=config.train.student, label="eval before",
                                           console=console)
        run = update_run(run_dir, eval=results)
    student = run_dir / "student"
    if (student / "adapter_config.json").exists():
        results["after"] = evaluate_model(config, questions, model=config.train.student, adapter=str(student),
                                          label="eval after", console=console)
    elif (student / "config.json").exists():
        results["after"] = evaluate_model(config, questions, model=str(student), label="eval after", console=console)
    sections: dict[str, Any] = {}
    if config.eval.teacher and results.get("teacher", {}).get("n") != len(questions):
        results["teacher"], sections = asyncio.run(_eval_teacher(config, run_dir, control, questions, run))
    if results.get("teacher") and results.get("after") and results["teacher"]["accuracy"]:
        results["student_vs_teacher"] = round(results["after"]["accuracy"] / results["teacher"]["accuracy"], 4)
    return update_run(run_dir, eval=results, **sections)


async def _eval_teacher(config: JobConfig, run_dir: Path, control: RunControl, questions: list[Any],
                        run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher's eval goes through the run's budget (cap included) and rank 0's journal."""
    from distilforge.core.journal import Journal
    from distilforge.evaluation.accuracy import eval_teacher_config, evaluate_teacher
    from distilforge.teachers.sampler import open_sampler

    spent, _ = journal_totals(run_dir)
    budget = control.budget(config, spent)
    journal = Journal(shard_path(run_dir, 0), fence=control.fence())
    ctx = RankContext(config, run_dir, 0, 1, journal, budget, control, Progress(), reject=lambda r: None,
                      fail=lambda *_: None)
    try:
        with use_context(ctx):
            sampler = await open_sampler(ctx, "eval_teacher", eval_teacher_config(config), stage="eval_teacher")
            summary = await evaluate_teacher(config, questions, sampler)
    finally:
        await ctx.aclose()
        journal.close()
    stage = sampler.stats.report()
    stage["cost_usd"] = round(budget.by_stage.get("eval_teacher", 0.0), 6)
    stages = {**(run.get("stages") or {}), "eval_teacher": stage}
    by_stage = {**(run.get("cost_by_stage") or {}), "eval_teacher": stage["cost_usd"]}
    totals = StageStats()
    for block in stages.values():
        totals.prompt_tokens += block["tokens"]["prompt"]
        totals.completion_tokens += block["tokens"]["completion"]
    requests = dict(run.get("requests") or {})
    for key, value in stage["requests"].items():
        if isinstance(value, int):
            requests[key] = requests.get(key, 0) + value
    sections = {
        "stages": stages,
        "cost_by_stage": by_stage,
        "cost_usd": round(sum(by_stage.values()), 6) if run.get("cost_usd") is not None else None,
        "requests": requests,
        "tokens": {"prompt": totals.prompt_tokens, "completion": totals.completion_tokens},
        "budget": {**(run.get("budget") or {}), **budget.report(),
                   "unknown_outcome_usd": round((run.get("budget") or {}).get("unknown_outcome_usd", 0.0)
                                                + budget.unknown_outcome_usd, 6)},
    }
    return summary, sections
