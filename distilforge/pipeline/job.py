"""The generate stage of a job: seeds -> teacher -> parse -> filters -> dataset, plus run.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.budget import Budget, resolve_prices
from distilforge.pipeline.base import Filter, PipelineStep
from distilforge.pipeline.dataset import KEPT_COLUMNS, REJECTED_COLUMNS, JsonlSink, jsonl_to_dataset
from distilforge.pipeline.executor import LocalExecutor
from distilforge.pipeline.filters import default_filters
from distilforge.pipeline.generate import Generate
from distilforge.pipeline.journal import Journal
from distilforge.pipeline.parse import ParseAnswer
from distilforge.pipeline.progress import RunProgress
from distilforge.pipeline.run_files import snapshot_config, update_run, write_atomic
from distilforge.pipeline.seeds import count_and_validate, read_seeds
from distilforge.schemas.config import JobConfig
from distilforge.schemas.records import Record
from distilforge.teachers import make_teacher


class Keep(PipelineStep):
    """The sink at the end of the filters: writes what survived every filter."""

    name = "keep"

    def __init__(self, sink: JsonlSink, progress: RunProgress):
        self.sink = sink
        self.progress = progress

    async def run(self, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        async for record in records:
            self.sink.write(record)
            self.progress.add_kept()
            yield record


def teacher_identity(config: JobConfig) -> dict[str, Any]:
    """What makes two requests the same logical request: not the URL or replica, not concurrency."""
    t = config.teacher
    backend = "openai" if t.backend == "vllm" else t.backend  # a vLLM server speaks the same API
    return {"backend": backend, "model": t.model, "params": t.params.model_dump(mode="json")}


def seed_kwargs(config: JobConfig) -> dict[str, Any]:
    s = config.seeds
    return {"limit": s.limit, "answer_type": config.generation.answer_type, "split": s.split, "subset": s.subset}


def make_budget(config: JobConfig, journal: Journal) -> Budget:
    multiplier = config.budget.batch_discount if config.teacher.batch else 1.0
    # Earlier runs of this folder count: settled answers at cost, orphaned reservations at worst case.
    spent = journal.spent_usd() + journal.batch_reserved_usd()
    return Budget(resolve_prices(config), config.budget.max_usd, multiplier=multiplier, spent=spent)


class _Interrupts:
    """First Ctrl-C: stop dispatching, let in-flight requests finish. Second: cancel them."""

    def __init__(self, generate: Generate, console: Console):
        self.generate = generate
        self.console = console
        self.count = 0
        self.task: asyncio.Task[Any] | None = None

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            self.generate.stop("interrupted")
            self.console.print("[yellow]stopping[/yellow]: no new requests; waiting for those in flight "
                               "(Ctrl-C again to abandon them; they will be re-sent on resume)")
        elif self.task is not None:
            self.generate.stop("interrupted")
            self.task.cancel()


async def _generate(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    n_seeds = count_and_validate(config.seeds.path, config.seeds.fields, **seed_kwargs(config))
    expected = n_seeds * config.generation.samples_per_seed
    staging = run_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)

    journal = Journal(run_dir / "journal.sqlite")
    try:
        budget = make_budget(config, journal)
    except Exception:
        journal.close()
        raise
    snapshot_config(config, run_dir)
    orphans = journal.orphan_count()
    teacher = make_teacher(config.teacher)
    kept_sink = JsonlSink(staging / "kept.jsonl", KEPT_COLUMNS)
    rejected_sink = JsonlSink(staging / "rejected.jsonl", REJECTED_COLUMNS)
    filters: list[Filter] = default_filters()
    for f in filters:
        f.reject_sink = rejected_sink.write
    batch_report: dict[str, Any] | None = None
    interrupts: _Interrupts | None = None
    loop = asyncio.get_running_loop()
    try:
        with RunProgress(console, expected, budget) as progress:
            generate = Generate(
                teacher, journal, config.generation, teacher_identity(config),
                budget=budget, completion_budget=config.teacher.completion_budget(),
                on_progress=progress.advance, supports_n=config.teacher.supports_n,
                journal_only=config.teacher.batch,
            )
            interrupts = _Interrupts(generate, console)
            interrupts.task = asyncio.current_task()
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
                loop.add_signal_handler(signal.SIGINT, interrupts)
            console.print(f"[dim]{n_seeds} seeds x {config.generation.samples_per_seed} samples; "
                          f"teacher {config.teacher.backend}:{config.teacher.model}"
                          + (f"; budget ${budget.spent:.4f} of ${config.budget.max_usd} spent"
                             if config.budget.max_usd else "") + "[/dim]")
            await teacher.start()
            if config.teacher.batch:
                from distilforge.teachers.batch import run_batches

                batch_report = await run_batches(config, teacher, journal, budget, generate, console)
            steps: list[PipelineStep] = [generate, ParseAnswer(), *filters, Keep(kept_sink, progress)]
            source = read_seeds(config.seeds.path, config.seeds.fields, **seed_kwargs(config))
            try:
                await LocalExecutor(steps).run(source)
            except asyncio.CancelledError:
                if not (interrupts and interrupts.count >= 2):
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        await teacher.aclose()
        kept_sink.close()
        rejected_sink.close()
        dead = journal.dead_letters()
        write_atomic(run_dir / "failed.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dead))
        journal.close()

    kept = jsonl_to_dataset(staging / "kept.jsonl", KEPT_COLUMNS, run_dir / "dataset", run_dir / "parquet" / "kept.parquet")
    jsonl_to_dataset(staging / "rejected.jsonl", REJECTED_COLUMNS, run_dir / "rejected",
                     run_dir / "parquet" / "rejected.parquet")
    stats = generate.stats
    rejected: dict[str, int] = {f.name: f.n_in - f.n_out for f in filters}
    wall = (stats.last_response - stats.first_request) if stats.first_request and stats.last_response else 0.0
    summary = {
        "name": config.name,
        "status": "completed" if generate.stopped is None else "stopped",
        "stopped": generate.stopped or "done",
        "teacher": {"backend": config.teacher.backend, "model": config.teacher.model,
                    "params": config.teacher.params.model_dump(mode="json", exclude_none=True)},
        "seeds": {"path": config.seeds.path, "count": n_seeds},
        "samples": {
            "expected": expected,
            "from_journal": stats.samples_from_journal,
            "new": stats.samples_new,
            "failed": len(dead),
            "not_sent": stats.samples_not_sent,
        },
        "requests": {
            "sent": stats.requests_sent,
            "succeeded": stats.requests_succeeded,
            "failed": stats.requests_failed,
            "retried": teacher.stats.retries,
            "rate_limited": teacher.stats.rate_limited,
            "attempts": teacher.stats.attempts,
            "errors": teacher.stats.errors_by_kind,
        },
        "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
        "cost_usd": round(budget.spent_this_run, 6) if budget.prices is not None else None,
        "budget": {
            "max_usd": config.budget.max_usd,
            "spent_usd_total": round(budget.spent, 6),
            "orphaned_requests": orphans,
            "prices": budget.prices.model_dump() if budget.prices else None,
        },
        "kept": kept,
        "rejected": {k: v for k, v in rejected.items() if v},
        "filters": [f.report() for f in filters],
        "wall_seconds": round(wall, 3),
        "total_seconds": round(time.monotonic() - started, 3),
    }
    if batch_report is not None:
        summary["batch"] = batch_report
    return update_run(run_dir, **summary)


def run_generate(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_generate(config, run_dir, console))
