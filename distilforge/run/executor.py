"""Executors decide where a pipeline runs. LocalExecutor: one asyncio event loop in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from distilforge.core.steps import PipelineStep, chain


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


class LocalExecutor:
    def __init__(self, steps: list[PipelineStep]):
        self.steps = steps

    async def run(self, source: Iterable[Any]) -> int:
        """Drain the pipeline; the last step is a sink. Returns how many records came out the end."""
        count = 0
        async for _ in chain(_aiter(source), self.steps):
            count += 1
        return count
