"""The pipeline's first step: the job's seeds, read from its seed file (datatrove's reader).

`SeedSource` is the one reader of `seeds:`: the data stage's ranks stream it, preflight counts it,
and `estimate`, the Batch API and the targeted rounds read it, each through `read`, so the file's
format, limit, split and bad-line policy are applied in one place. Other question files (eval sets,
the ICL pool, a probe file) go through `core.seeds.read_questions`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from distilforge.core.seeds import SeedSelection, read_seeds, seed_rank
from distilforge.pipeline.steps import PipelineStep
from distilforge.schemas.records import Seed

if TYPE_CHECKING:
    from distilforge.schemas import JobConfig


class SeedSource(PipelineStep):
    """Seeds in file order: those `selection` keeps, the rank's share of them (a stable hash of seed_id).

    It keeps no stats of its own (the funnel starts at the first step that does work), and ignores its
    input stream: it is the start of one.
    """

    name = "seeds"

    def __init__(self, config: JobConfig, selection: SeedSelection | None = None, *,
                 answer_type: str | None = None):
        self.config = config
        self.selection = selection or SeedSelection()
        self.answer_type = answer_type or config.generation.answer_type  # evol-instruct reads instructions as text

    def read(self, rank: int = 0, world_size: int = 1, *,
             rejected: list[dict[str, str]] | None = None) -> Iterator[Seed]:
        """The seeds, synchronously (a worker thread's loop, preflight, estimate); `rejected` collects the
        lines `seeds.on_bad_line: skip` leaves out."""
        s = self.config.seeds
        for seed in read_seeds(s.path, s.fields, limit=s.limit, answer_type=self.answer_type, split=s.split,
                               subset=s.subset, format=s.format, on_bad_line=s.on_bad_line, rejected=rejected):
            if self.selection(seed.seed_id) and seed_rank(seed.seed_id, world_size) == rank:
                yield seed

    async def run(self, records: AsyncIterator[Any], rank: int = 0, world_size: int = 1) -> AsyncIterator[Seed]:
        async for seed in threaded(self.read(rank, world_size)):
            yield seed


async def threaded(items: Iterator[Any], chunk: int = 256) -> AsyncIterator[Any]:
    """Items taken in chunks on a worker thread: parsing a file never blocks the event loop."""
    sentinel = object()

    def take() -> list[Any]:
        out = []
        for _ in range(chunk):
            item = next(items, sentinel)
            if item is sentinel:
                out.append(sentinel)
                break
            out.append(item)
        return out

    while True:
        batch = await asyncio.to_thread(take)
        for item in batch:
            if item is sentinel:
                return
            yield item
