"""One rank's lifecycle, written once: every stage that runs steps or pays a teacher opens its rank here.

`open_rank` builds the rank's `RankContext` (its journal shard, the run's budget and control, its
progress, its staging shards), starts it with the stops that came before it opened, makes it the
current context for the rank's steps, and closes everything in order when the rank ends, however it
ends: the steps' resources (samplers, teachers), then the shards, then the journal.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from distilforge.core.budget import Budget
from distilforge.core.journal import Journal, shard_path
from distilforge.pipeline.dataset_writer import REJECTED_COLUMNS, JsonlSink
from distilforge.pipeline.steps import Progress, RankContext, RunControl, use_context
from distilforge.schemas import JobConfig
from distilforge.schemas.records import Missing, Record


def staging_dir(run_dir: Path, rank: int) -> Path:
    return run_dir / ".staging" / f"rank-{rank:05d}"


def _drop(_: object) -> None:
    """A sink for what a stage does not keep (the teacher eval's rejects: it has none to write)."""


@contextlib.asynccontextmanager
async def open_rank(config: JobConfig, run_dir: Path, budget: Budget, control: RunControl, *, rank: int = 0,
                    world_size: int = 1, progress: Progress | None = None, journal: bool = True,
                    staging: Path | None = None, failed: bool = True, stops: Iterable[str] = (),
                    log: Callable[[str], None] | None = None) -> AsyncIterator[RankContext]:
    """The rank's context, open for the `async with` body.

    `journal`: the rank's journal shard, fenced by the control's lease epoch (False: a stage that sends
    nothing, such as the global filters). `staging`: a fresh folder for the rank's kept.jsonl and
    rejected.jsonl (and failed.jsonl unless `failed` is False), written through `ctx.keep`, the steps'
    rejects and `ctx.fail`; None drops rejects and failures. `ctx.counts` says how many rows each took
    (kept, and missing samples by reason). `stops`: the stops sent before the rank opened.
    """
    sinks: dict[str, JsonlSink] = {}
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
        sinks["kept"] = JsonlSink(staging / "kept.jsonl", REJECTED_COLUMNS)
        sinks["rejected"] = JsonlSink(staging / "rejected.jsonl", REJECTED_COLUMNS)
        if failed:
            sinks["failed"] = JsonlSink(staging / "failed.jsonl")
    shard = Journal(shard_path(run_dir, rank), fence=control.fence()) if journal else None

    def keep(record: Record) -> None:
        ctx.counts["kept"] += 1
        if "kept" in sinks:
            sinks["kept"].write(record)

    def fail(missing: Missing) -> None:
        ctx.counts[missing.reason] += 1
        if "failed" in sinks:
            sinks["failed"].write_row(missing.row())

    rejected = sinks.get("rejected")
    ctx = RankContext(config, run_dir, rank, world_size, shard, budget, control, progress or Progress(),
                      reject=rejected.write if rejected is not None else _drop, fail=fail, keep=keep,
                      log=log or _drop)
    for reason in stops:
        ctx.stop(reason)
    try:
        with use_context(ctx):
            yield ctx
    finally:
        try:
            await ctx.aclose()
        finally:
            for sink in sinks.values():
                sink.close()
            if shard is not None:
                shard.close()
