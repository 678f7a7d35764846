"""The generate stage of a job: seeds -> teacher -> parse -> filters -> dataset, plus run.json."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.pipeline.base import Filter, PipelineStep
from distilforge.pipeline.dataset import KEPT_COLUMNS, REJECTED_COLUMNS, JsonlSink, jsonl_to_dataset
from distilforge.pipeline.executor import LocalExecutor
from distilforge.pipeline.filters import default_filters
from distilforge.pipeline.generate import Generate, failure_line
from distilforge.pipeline.journal import Journal
from distilforge.pipeline.parse import ParseAnswer
from distilforge.pipeline.progress import RunProgress
from distilforge.pipeline.run_files import snapshot_config, update_run
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
    return {"backend": t.backend, "model": t.model, "params": t.params.model_dump(mode="json")}


def seed_kwargs(config: JobConfig) -> dict[str, Any]:
    s = config.seeds
    return {"limit": s.limit, "answer_type": config.generation.answer_type, "split": s.split, "subset": s.subset}


async def _generate(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    n_seeds = count_and_validate(config.seeds.path, config.seeds.fields, **seed_kwargs(config))
    expected = n_seeds * config.generation.samples_per_seed
    staging = run_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    snapshot_config(config, run_dir)

    teacher = make_teacher(config.teacher)
    journal = Journal(run_dir / "journal.sqlite")
    kept_sink = JsonlSink(staging / "kept.jsonl", KEPT_COLUMNS)
    rejected_sink = JsonlSink(staging / "rejected.jsonl", REJECTED_COLUMNS)
    failed_path = run_dir / "failed.jsonl"
    failed_fh = failed_path.open("w", encoding="utf-8")
    failures = 0

    def on_failure(failure: dict[str, Any]) -> None:
        nonlocal failures
        failures += 1
        failed_fh.write(failure_line(failure))
        failed_fh.flush()

    filters: list[Filter] = default_filters()
    for f in filters:
        f.reject_sink = rejected_sink.write
    try:
        with RunProgress(console, expected, config.budget.prices) as progress:
            generate = Generate(
                teacher, journal, config.generation, teacher_identity(config),
                on_failure=on_failure, on_progress=progress.advance,
                supports_n=config.teacher.supports_n,
            )
            console.print(f"[dim]{n_seeds} seeds x {config.generation.samples_per_seed} samples; "
                          f"teacher {config.teacher.backend}:{config.teacher.model}[/dim]")
            await teacher.start()
            steps: list[PipelineStep] = [generate, ParseAnswer(), *filters, Keep(kept_sink, progress)]
            source = read_seeds(config.seeds.path, config.seeds.fields, **seed_kwargs(config))
            await LocalExecutor(steps).run(source)
    finally:
        await teacher.aclose()
        kept_sink.close()
        rejected_sink.close()
        failed_fh.close()
        journal.close()

    kept = jsonl_to_dataset(staging / "kept.jsonl", KEPT_COLUMNS, run_dir / "dataset", run_dir / "parquet" / "kept.parquet")
    jsonl_to_dataset(staging / "rejected.jsonl", REJECTED_COLUMNS, run_dir / "rejected",
                     run_dir / "parquet" / "rejected.parquet")
    stats = generate.stats
    rejected: dict[str, int] = {f.name: f.n_in - f.n_out for f in filters}
    spend = None
    if config.budget.prices is not None:
        p = config.budget.prices
        spend = round((stats.prompt_tokens * p.input_per_million + stats.completion_tokens * p.output_per_million) / 1e6, 6)
    wall = (stats.last_response - stats.first_request) if stats.first_request and stats.last_response else 0.0
    summary = {
        "name": config.name,
        "status": "completed",
        "teacher": {"backend": config.teacher.backend, "model": config.teacher.model,
                    "params": config.teacher.params.model_dump(mode="json", exclude_none=True)},
        "seeds": {"path": config.seeds.path, "count": n_seeds},
        "samples": {
            "expected": expected,
            "from_journal": stats.samples_from_journal,
            "new": stats.samples_new,
            "failed": stats.samples_failed,
        },
        "requests": {
            "sent": stats.requests_sent,
            "succeeded": stats.requests_succeeded,
            "failed": stats.requests_failed,
            "attempts": teacher.stats.attempts,
            "retries": teacher.stats.retries,
            "rate_limited": teacher.stats.rate_limited,
            "errors": teacher.stats.errors_by_kind,
        },
        "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
        "spend_usd": spend,
        "kept": kept,
        "rejected": {k: v for k, v in rejected.items() if v},
        "filters": [f.report() for f in filters],
        "wall_seconds": round(wall, 3),
        "total_seconds": round(time.monotonic() - started, 3),
    }
    return update_run(run_dir, **summary)


def run_generate(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_generate(config, run_dir, console))


def read_failures(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "failed.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
