"""The generate stage: the executor runs the ranks, then the global filters and the dataset files.

Ctrl-C, a cancelled job and a lost lease reach the ranks from here: a first Ctrl-C stops sending and
lets what is in flight finish, a second abandons it; the embedding process's `RunControl` is polled a
few times a second and its stop reasons are forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import Budget
from distilforge.core.journal import journal_totals, shard_path
from distilforge.core.run_files import snapshot_config, update_run
from distilforge.pipeline.build import Pipeline, build_pipeline
from distilforge.pipeline.dataset_writer import (
    FAILED_COLUMNS,
    REJECTED_COLUMNS,
    jsonl_to_dataset,
    sorted_rows,
    write_dataset,
    write_sorted_jsonl,
)
from distilforge.pipeline.executor import Executor, LocalExecutor, RankResult, merge_results
from distilforge.pipeline.preflight import Facts
from distilforge.pipeline.progress import ProgressView
from distilforge.pipeline.rank import open_rank, staging_dir
from distilforge.pipeline.run_report import build_run_report, money
from distilforge.pipeline.steps import (
    Progress,
    RunControl,
    StepStats,
    aiter_of,
    chain,
)
from distilforge.schemas import JobConfig
from distilforge.schemas.records import Record
from distilforge.teachers import display_model


def make_executor(config: JobConfig) -> Executor:
    if config.executor.kind == "ray":
        from distilforge.pipeline.ray import RayExecutor

        return RayExecutor(config.executor)
    return LocalExecutor()


def prefetch_imports() -> None:
    """Import the dataset writer's libraries (pyarrow, not `datasets`) on a thread while the first
    requests are in flight."""

    def load() -> None:
        with contextlib.suppress(Exception):
            import pyarrow.compute
            import pyarrow.ipc
            import pyarrow.json
            import pyarrow.parquet  # noqa: F401

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

    def __init__(self, executor: Executor, control: RunControl, progress: Progress, console: Console):
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
            self.control.report({**self.progress.snapshot(), "stage": "generate"})
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
    async with open_rank(pipeline.config, run_dir, budget, control, journal=False, staging=folder,
                         failed=False) as ctx:
        records = (Record.from_row(row) for row in sorted_rows(kept, folder))
        async for record in chain(aiter_of(records), list(pipeline.global_filters)):
            ctx.keep(record)
    return folder / "kept.jsonl", folder / "rejected.jsonl", ctx.stats


def _lines(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.exists():
            with path.open("rb") as fh:
                total += sum(1 for _ in fh)
    return total


def _count_reasons(paths: list[Path]) -> dict[str, int]:
    """Rejected rows by reason over rejected files, streamed."""
    import json
    from collections import Counter

    counts: Counter[str] = Counter()
    for path in paths:
        if path.exists():
            with path.open(encoding="utf-8") as fh:
                counts.update(json.loads(line).get("reject_reason") or "unknown" for line in fh if line.strip())
    return dict(counts.most_common())


def round_usd(usd: float) -> float:
    """Dollars to six places (here, where `generate_stage`'s `round` parameter does not hide the builtin)."""
    return round(usd, 6)


def round_dir(run_dir: Path, round: int) -> Path:
    return run_dir / "rounds" / f"round-{round:02d}"


def _keep_round(run_dir: Path, round: int, parts: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Targeted rounds: this round's final kept / rejected / failed rows stay in rounds/round-NN/, and
    the run's files are built from every round's (the dataset grows round by round)."""
    folder = round_dir(run_dir, round)
    folder.mkdir(parents=True, exist_ok=True)
    for name, paths in parts.items():
        tmp = folder / f"{name}.jsonl.tmp"
        with tmp.open("wb") as out:
            for path in paths:
                if path.exists():
                    with path.open("rb") as src:
                        shutil.copyfileobj(src, out)
        tmp.replace(folder / f"{name}.jsonl")
    rounds = sorted((run_dir / "rounds").glob("round-*"))
    return {name: [r / f"{name}.jsonl" for r in rounds if (r / f"{name}.jsonl").exists()] for name in parts}


def _write_rejected_seeds(run_dir: Path, rejected: list[dict[str, str]]) -> None:
    """seeds.on_bad_line: skip: each line left out, with its reason (written whole, then renamed)."""
    target = run_dir / "rejected_seeds.jsonl"
    if not rejected:
        target.unlink(missing_ok=True)
        return
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rejected:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(target)


async def _finish_round(config: JobConfig, run_dir: Path, summary: dict[str, Any], budget: Budget, facts: Facts, *,
                        round: int, n_kept: int, n_failed_all: int, rejected: list[Path],
                        splits: dict[str, int]) -> dict[str, Any]:
    """A targeted round's account goes back to the caller; run.json's counts and money grow by it."""
    summary["round_kept"] = n_kept
    summary["round_cost_usd"] = round_usd(budget.spent_this_run) if budget.prices is not None else None
    # Every count covers one scope, the whole run: the first pass and every round so far (the merge adds
    # this round's expected samples; failed and kept are counted over every round's files).
    samples = {"expected": facts.expected, "failed": n_failed_all}
    update_run(run_dir, kept=summary["kept"], rejected=_count_reasons(rejected), samples=samples,
               scope=f"whole run: the first pass and targeted rounds 1-{round}", budget=summary["budget"],
               **money(run_dir))
    shutil.rmtree(run_dir / ".staging", ignore_errors=True)
    from distilforge.publish import write_card

    await asyncio.to_thread(write_card, config, run_dir, splits)
    return summary


async def _run_ranks(executor: Executor, pipeline: Pipeline, run_dir: Path, budget: Budget, control: RunControl,
                     progress: Progress, driver: _Driver) -> list[RankResult]:
    """The executor's run under Ctrl-C handling and the progress view; a second Ctrl-C or a lost lease
    ends it with the results the ranks have."""
    loop = asyncio.get_running_loop()
    # Only the main thread of a POSIX process takes signals (a service worker runs jobs in threads
    # and stops them through its RunControl instead).
    handles_sigint = sys.platform != "win32" and threading.current_thread() is threading.main_thread()
    results: list[RankResult] = []
    try:
        if handles_sigint:
            loop.add_signal_handler(signal.SIGINT, driver.on_sigint)
        with ProgressView(driver.console, progress) as view:
            watcher = asyncio.create_task(driver.watch())
            painter = asyncio.create_task(view.keep_fresh())
            try:
                try:
                    results = await executor.run(pipeline, run_dir, budget, control, progress)
                finally:
                    await budget.close()
            except asyncio.CancelledError:
                if not (driver.interrupts >= 2 or control.lost()):
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                results = list(executor.results)
                executor.stop("interrupted" if driver.interrupts >= 2 else "lease_lost")
            finally:
                watcher.cancel()
                painter.cancel()
    finally:
        if handles_sigint:
            loop.remove_signal_handler(signal.SIGINT)
    return results


async def generate_stage(config: JobConfig, run_dir: Path, control: RunControl, console: Console, executor: Executor,
                         facts: Facts, *, pipeline: Pipeline | None = None, round: int = 0) -> dict[str, Any]:
    """Run the ranks, then write the dataset, rejected and failed files, run.json and the card.

    With targeted rounds (`loop.rounds`), `round` says which one this is; its rows are kept per round
    and the files cover every round. A round's account goes back to the caller, not into run.json.
    """
    started = time.monotonic()
    pipeline = pipeline or build_pipeline(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    _migrate_legacy_journal(run_dir)
    shutil.rmtree(run_dir / ".staging" / "global", ignore_errors=True)  # ranks clear (or reuse) their own
    spent, orphans = journal_totals(run_dir)
    budget = control.budget(config, spent)
    snapshot_config(config, run_dir)
    if not round:
        _write_rejected_seeds(run_dir, facts.rejected_seeds)
    progress = Progress(total=facts.expected)
    driver = _Driver(executor, control, progress, console)
    driver.task = asyncio.current_task()
    g = config.generation
    console.print(f"[dim]{facts.n_seeds} seeds x {g.samples_per_seed} samples; teacher "
                  f"{config.teacher.backend}:{display_model(config.teacher)}"
                  + (f"; {executor.kind} executor, {executor.world_size} ranks" if executor.kind != "local" else "")
                  + (f"; budget ${budget.spent:.4f} of ${config.budget.max_usd} spent" if config.budget.max_usd else "")
                  + "[/dim]")
    results = await _run_ranks(executor, pipeline, run_dir, budget, control, progress, driver)
    if control.lost():
        return {"status": "lease_lost", "stopped": "lease_lost"}

    steps, stages = merge_results(results, [s.name for s in pipeline.steps])
    stop_reasons = sorted({r for result in results for r in result.stop_reasons} | set(executor.stop_reasons))
    if driver.interrupts and "interrupted" not in stop_reasons:
        stop_reasons.append("interrupted")
    ranks = list(range(executor.world_size))
    kept = [staging_dir(run_dir, r) / "kept.jsonl" for r in ranks]
    rejected = [staging_dir(run_dir, r) / "rejected.jsonl" for r in ranks]
    failed = [staging_dir(run_dir, r) / "failed.jsonl" for r in ranks]
    if pipeline.global_filters:
        kept_path, rejected_path, global_stats = await _global_stage(pipeline, run_dir, kept, budget, control)
        kept, rejected = [kept_path], [*rejected, rejected_path]
        for name, stats in global_stats.items():
            steps.setdefault(name, StepStats(name)).merge(stats)
    control.check()  # a worker that lost its lease must not write the run's final files
    n_failed = _lines(failed)
    n_kept = _lines(kept)  # this round's (after the global filters)
    if config.loop.rounds:
        every = _keep_round(run_dir, round, {"kept": kept, "rejected": rejected, "failed": failed})
        kept, rejected, failed = every["kept"], every["rejected"], every["failed"]
    n_failed_all = _lines(failed)
    splits = await asyncio.to_thread(write_dataset, kept, run_dir, config.output.validation_fraction, g.rng_seed)
    await asyncio.to_thread(jsonl_to_dataset, rejected, REJECTED_COLUMNS, run_dir / "rejected",
                            run_dir / "parquet" / "rejected.parquet")
    await asyncio.to_thread(write_sorted_jsonl, failed, FAILED_COLUMNS, run_dir / "failed.jsonl")

    summary = build_run_report(config, pipeline, results, steps, stages, stop_reasons, budget, executor=executor,
                               n_seeds=facts.n_seeds, expected=facts.expected, orphans=orphans, splits=splits,
                               n_failed=n_failed, started=started, run_dir=run_dir)
    status = summary["status"]
    if round:  # a targeted round: the caller keeps its account; the run's totals grow by it
        return await _finish_round(config, run_dir, summary, budget, facts, round=round, n_kept=n_kept,
                                   n_failed_all=n_failed_all, rejected=rejected, splits=splits)
    if config.seeds.on_bad_line == "skip":
        summary["rejected_seeds"] = len(facts.rejected_seeds)
    run = update_run(run_dir, recount=True, **summary)
    from distilforge.publish import write_card

    await asyncio.to_thread(write_card, config, run_dir, splits)
    if status == "completed":  # otherwise a rerun reuses the shards its ranks completed
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)
    return run


