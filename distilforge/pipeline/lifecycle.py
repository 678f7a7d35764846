"""The one run lifecycle: `run_job(config, run_dir, control)`, called by the CLI and the service alike.

Order: check every input (nothing written yet) -> generate (executor: ranks over seed shards, then
the global filters over all kept records) -> dataset, run.json, card -> train -> eval -> publish ->
report. This module alone decides which stage runs after which outcome, what the outcome is called
(`status`) and which exit code it maps to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import BudgetError
from distilforge.core.prices import resolve_prices
from distilforge.core.redact import redact
from distilforge.core.run_files import RUN_JSON, hold_run_folder, read_run, update_run
from distilforge.core.seeds import SeedError
from distilforge.models import ModelError
from distilforge.pipeline.data_stage import generate_stage, make_executor, prefetch_imports
from distilforge.pipeline.executor import Executor
from distilforge.pipeline.preflight import ChecksStopped, Facts, check_inputs, probe_teachers
from distilforge.pipeline.run_report import money, start_invocation
from distilforge.pipeline.stages import eval_stage, report_stage, train_stage
from distilforge.pipeline.steps import RunControl
from distilforge.schemas import ConfigError, JobConfig
from distilforge.teachers.base import TeacherError

ALL_STAGES = ("generate", "train", "eval", "publish", "report")
# Errors the CLI prints as one line with exit 2 (the input was wrong); anything else after spending is `failed`.
INPUT_ERRORS = (ConfigError, SeedError, ModelError, TeacherError, BudgetError, FileNotFoundError)
EXIT_CODES = {"completed": 0, "stopped": 0, "cancelled": 0, "lease_lost": 0, "failed": 1, "interrupted": 130}


@dataclass
class JobResult:
    run: dict[str, Any]
    status: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def run_job(config: JobConfig, run_dir: Path, control: RunControl | None = None, *, console: Console | None = None,
            stages: tuple[str, ...] = ALL_STAGES, executor: Executor | None = None) -> JobResult:
    """Run `stages` of a job in `run_dir`. Input errors raise (nothing written, nothing paid); outcomes are a status.

    The folder's lock is taken before any request (a second writer is refused, exit 2), then every
    teacher endpoint is probed; only then does this invocation start spending.
    """
    console = console or Console(stderr=True)
    control = control or RunControl()
    try:
        facts = check_inputs(config, stages, should_stop=control.stop_reason)
    except ChecksStopped as stop:  # cancelled before anything was sent: nothing to report
        status = "lease_lost" if control.lost() else "cancelled"
        return JobResult({"status": status, "stopped": str(stop)}, status)
    if "rounds" in stages:  # `improve`: a finished run, and a probe it can hold apart (nothing written yet)
        from distilforge.pipeline.rounds import probe_plan

        probe_plan(config, run_dir)
    # One writer per folder: an OS lock, unless the caller fences the journal with a lease epoch (the
    # service's workers, which may sit on other hosts, where a local lock would not reach).
    with hold_run_folder(run_dir) if control.fence() is None else contextlib.nullcontext():
        probe_teachers(config, stages)
        start_invocation(run_dir, stages, resolve_prices(config) is not None)
        try:
            result = _run_stages(config, run_dir, control, console, stages, executor, facts)
        except (KeyboardInterrupt, Exception) as exc:
            return _ended_by(exc, run_dir, control, stages)
        if result.status != "lease_lost" and not control.lost() and (run_dir / RUN_JSON).exists():
            result.run = update_run(run_dir, **money(run_dir))
        return result


def _ended_by(exc: BaseException, run_dir: Path, control: RunControl, stages: tuple[str, ...]) -> JobResult:
    """Ctrl-C outside the generate stage (training, eval) is `interrupted`; a failure after this invocation
    spent is `failed` with its error, never `completed`. Input errors still reach the CLI (exit 2)."""
    from distilforge.publish import PublishError
    from distilforge.trainers.sft import TrainError

    if control.lost() or not (run_dir / RUN_JSON).exists():  # a worker that lost its lease writes nothing
        raise exc
    if isinstance(exc, KeyboardInterrupt):
        return JobResult(update_run(run_dir, status="interrupted", stopped="interrupted", **money(run_dir)),
                         "interrupted")
    if not ("generate" in stages or "rounds" in stages) or isinstance(exc, PublishError):
        raise exc  # `train DIR` on bad input, a refused upload: the data's status stands
    error = " ".join(redact(str(exc)).split()) or type(exc).__name__  # one line
    run = update_run(run_dir, status="failed", error=error, **money(run_dir))
    if isinstance(exc, (*INPUT_ERRORS, TrainError)):
        raise exc  # the CLI's one line and exit 2
    return JobResult(run, "failed")


def _generate(config: JobConfig, run_dir: Path, control: RunControl, console: Console, stages: tuple[str, ...],
              executor: Executor | None, facts: Facts) -> dict[str, Any]:
    prefetch_imports()
    first = config
    if config.loop.rounds:  # the probe split is held apart, and every row is checked against it
        from distilforge.pipeline.rounds import with_probe_guard, write_probe

        write_probe(config, run_dir, facts.probe or [])
        first = with_probe_guard(config, run_dir)
    return asyncio.run(generate_stage(first, run_dir, control, console, executor or make_executor(config), facts))


def _run_stages(config: JobConfig, run_dir: Path, control: RunControl, console: Console, stages: tuple[str, ...],
                executor: Executor | None, facts: Facts) -> JobResult:
    explicit = len(stages) == 1  # `distilforge train DIR`: the stage was asked for by name
    started = time.monotonic()
    if "generate" in stages:
        run = _generate(config, run_dir, control, console, stages, executor, facts)
        status = run["status"]
        if status in ("interrupted", "lease_lost", "failed", "cancelled"):
            if status not in ("lease_lost",) and "report" in stages:
                report_stage(run_dir, console)
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
            from distilforge.trainers.sft import TrainingStopped

            control.check()
            control.report({"stage": "train"})
            try:
                run = train_stage(config, run_dir, control, console)
            except TrainingStopped:  # cancelled (or the lease was lost) during training: nothing saved
                status = "lease_lost" if control.lost() else "cancelled"
                return JobResult(update_run(run_dir, status=status, stopped=status), status)
            trained = True
    if "eval" in stages and (explicit or config.train.enabled):
        control.check()
        control.report({"stage": "eval"})
        run = eval_stage(config, run_dir, control, console, trained=trained)
    # `loop.rounds` follow a first pass this invocation trained on (`run`); `generate` is the data stage only.
    if "rounds" in stages or (config.loop.rounds and status in ("completed", "stopped")
                              and "generate" in stages and "train" in stages and run.get("kept")):
        from distilforge.pipeline.rounds import run_rounds

        run = run_rounds(config, run_dir, control, console, config.loop.rounds, explicit="rounds" in stages)
    if "publish" in stages and config.output.hub_repo and status == "completed":
        run = _publish(config, run_dir, control, console, stages)
    if "generate" in stages:
        run = update_run(run_dir, total_seconds=round(time.monotonic() - started, 3))
    if "report" in stages:
        report_stage(run_dir, console)
    return JobResult(run, status)


def _publish(config: JobConfig, run_dir: Path, control: RunControl, console: Console,
             stages: tuple[str, ...]) -> dict[str, Any]:
    from distilforge.publish import PublishError, publish_dataset

    control.check()
    try:
        # The service checked the repo against DISTILFORGE_HUB_REPOS when the job was submitted.
        return update_run(run_dir, published=publish_dataset(run_dir, config.output.hub_repo,
                                                             private=config.output.private))
    except PublishError as exc:
        update_run(run_dir, published={"error": str(exc)})
        if "report" in stages:
            report_stage(run_dir, console)
        raise
