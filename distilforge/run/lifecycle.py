"""The one run lifecycle: `run_job(config, run_dir, control)`, called by the CLI and the service alike.

Order: check every input (nothing written yet) -> generate (executor: ranks over seed shards, then
the global filters over all kept records) -> dataset, run.json, card -> train -> eval -> publish ->
report. This module alone decides which stage runs after which outcome, what the outcome is called
(`status`) and which exit code it maps to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.config import JobConfig
from distilforge.core.run_files import read_run, update_run
from distilforge.core.steps import RunControl
from distilforge.run.checks import ChecksStopped, check_inputs
from distilforge.run.generate import generate_stage, make_executor, prefetch_imports
from distilforge.run.stages import eval_stage, report_stage, train_stage

ALL_STAGES = ("generate", "train", "eval", "publish", "report")
EXIT_CODES = {"completed": 0, "stopped": 0, "cancelled": 0, "lease_lost": 0, "failed": 1, "interrupted": 130}


@dataclass
class JobResult:
    run: dict[str, Any]
    status: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def run_job(config: JobConfig, run_dir: Path, control: RunControl | None = None, *, console: Console | None = None,
            stages: tuple[str, ...] = ALL_STAGES, executor: Any = None) -> JobResult:
    """Run `stages` of a job in `run_dir`. Input errors raise (nothing written); outcomes are a status."""
    console = console or Console(stderr=True)
    control = control or RunControl()
    explicit = len(stages) == 1  # `distilforge train DIR`: the stage was asked for by name
    started = time.monotonic()
    try:
        facts = check_inputs(config, stages, should_stop=control.stop_reason)
    except ChecksStopped as stop:  # cancelled before anything was sent: nothing to report
        status = "lease_lost" if control.lost() else "cancelled"
        return JobResult({"status": status, "stopped": str(stop)}, status)
    if "generate" in stages:
        prefetch_imports()
        first = config
        if config.loop.rounds:  # the probe split is held apart, and every row is checked against it
            from distilforge.run.rounds import with_probe_guard, write_probe

            write_probe(config, run_dir)
            first = with_probe_guard(config, run_dir)
        run = asyncio.run(generate_stage(first, run_dir, control, console, executor or make_executor(config), facts))
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
    if config.loop.rounds and status in ("completed", "stopped") and (
            "rounds" in stages or ("generate" in stages and run.get("kept"))):
        from distilforge.run.rounds import run_rounds

        run = run_rounds(config, run_dir, control, console, config.loop.rounds)
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
                report_stage(run_dir, console)
            raise
    if "generate" in stages:
        run = update_run(run_dir, total_seconds=round(time.monotonic() - started, 3))
    if "report" in stages:
        report_stage(run_dir, console)
    return JobResult(run, status)


