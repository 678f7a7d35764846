"""A pipeline is a list of small steps over an async stream of records (the datatrove shape).

Steps say *what* happens to records; an executor decides *where* the pipeline runs.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from distilforge.core.records import Record


class PipelineStep(abc.ABC):
    name: str = "step"

    @abc.abstractmethod
    def run(self, records: AsyncIterator[Any]) -> AsyncIterator[Any]: ...


class Map(PipelineStep):
    """Applies a per-record function (parsing, enrichment)."""

    def __init__(self, name: str, fn: Callable[[Record], Record]):
        self.name = name
        self.fn = fn

    async def run(self, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        async for record in records:
            yield self.fn(record)


class Filter(PipelineStep):
    """A filter writes only `check`: None keeps the record, a string rejects it with that detail.

    The base class counts what goes in and out, times the checks, tags rejects with the filter's name
    and hands them to the reject sink, keeping a few examples for the report.
    """

    examples_kept = 3

    def __init__(self) -> None:
        self.n_in = 0
        self.n_out = 0
        self.seconds = 0.0
        self.examples: list[dict[str, Any]] = []
        self.reject_sink: Callable[[Record], None] | None = None

    @abc.abstractmethod
    def check(self, record: Record) -> str | None: ...

    async def run(self, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        async for record in records:
            self.n_in += 1
            start = time.perf_counter()
            detail = self.check(record)
            self.seconds += time.perf_counter() - start
            if detail is None:
                self.n_out += 1
                yield record
                continue
            self.reject(record, self.name, detail)

    def reject(self, record: Record, reason: str, detail: str) -> None:
        """Tag a reject, keep a few examples for the report, and hand it to the sink."""
        record.reject_reason, record.reject_detail = reason, detail
        if len(self.examples) < self.examples_kept:
            self.examples.append({"seed_id": record.seed_id, "reason": reason, "detail": detail,
                                  "text": record.text[:300]})
        if self.reject_sink is not None:
            self.reject_sink(record)

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.n_in,
            "out": self.n_out,
            "seconds": round(self.seconds, 4),
            "examples": self.examples,
        }


def chain(source: AsyncIterator[Any], steps: list[PipelineStep]) -> AsyncIterator[Any]:
    stream = source
    for step in steps:
        stream = step.run(stream)
    return stream
