"""A pipeline is a list of small steps over an async stream of records (the datatrove shape).

Steps say *what* happens to records; an executor decides *where* (which process, which rank). A step
holds only its configuration, so a pipeline pickles and ships to another process; it opens live
resources (teachers, samplers, indexes) inside `run(records, rank, world_size)` through the rank's
`RankContext`, which the executor sets up and closes.

Every step keeps its own stats (datatrove's `stat_update`): records in and out, rejects by reason,
seconds spent in its own work. Filters write only `check`; group steps (a decision per seed) write
only `decide`; the base counts, times, tags rejects and hands them to the rank's reject sink.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilforge.schemas.records import Missing, Record

if TYPE_CHECKING:
    from distilforge.core.budget import Budget
    from distilforge.core.journal import Journal
    from distilforge.schemas import JobConfig


async def aiter_of(items: Iterable[Any]) -> AsyncIterator[Any]:
    """An async stream over a plain iterable (the one adapter every step and source uses)."""
    for item in items:
        yield item


@dataclass
class StepStats:
    """What one step did on one rank; ranks' stats merge by addition."""

    name: str
    n_in: int = 0
    n_out: int = 0
    seconds: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)  # step-specific counts (stat_update)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: StepStats) -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        self.seconds += other.seconds
        self.rejected.update(other.rejected)
        self.counters.update(other.counters)
        self.examples = (self.examples + other.examples)[:EXAMPLES_KEPT]

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": self.n_in, "out": self.n_out,
                               "seconds": round(self.seconds, 4), "examples": self.examples}
        for key, n in sorted(self.counters.items()):
            if "." in key:  # "per_eval_set.test" -> {"per_eval_set": {"test": n}}
                group, item = key.split(".", 1)
                out.setdefault(group, {})[item] = n
            else:
                out[key] = n
        return out


EXAMPLES_KEPT = 3


class RunControl:
    """How the process that started a run steers it: stop requests, lease checks, progress."""

    def stop_reason(self) -> str | None:
        """Polled a few times a second: a reason ('cancelled', ...) stops dispatching."""
        return None

    def lost(self) -> bool:
        """True once the run must stop at once (its lease is gone): in-flight work is abandoned."""
        return False

    def fence(self) -> int | None:
        """A lease epoch written into the journal; every journal write checks it (None: no fencing)."""
        return None

    def check(self) -> None:
        """Raises when the run may no longer write its final files (a lost lease)."""

    def report(self, progress: dict[str, Any]) -> None:
        """Receives the run's progress a few times a second."""

    def response_cache(self) -> Path | None:
        """The response cache file this run shares with others (None: off); the service's is per owner."""
        from distilforge.core.response_cache import default_cache_path

        return default_cache_path()

    def budget(self, config: JobConfig, spent: float) -> Budget:
        """The run's one budget; `spent` is what earlier runs of this folder already spent (or may have)."""
        from distilforge.core.budget import Budget
        from distilforge.core.prices import resolve_prices

        return Budget(resolve_prices(config), config.budget.max_usd, spent=spent)


class Progress:
    """Counts a rank reports while it works; the driver renders them (bar, logs, the service's API)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.done = 0
        self.kept = 0
        self.tokens = 0
        self.spend = 0.0

    def advance(self, samples: int, tokens: int = 0, usd: float = 0.0) -> None:
        self.done += samples
        self.tokens += tokens
        self.spend += usd

    def add_kept(self, n: int = 1) -> None:
        self.kept += n

    def snapshot(self) -> dict[str, Any]:
        return {"samples_done": self.done, "samples_total": self.total, "kept": self.kept, "tokens": self.tokens,
                "spend_usd": round(self.spend, 6)}


Sink = Callable[[Record], None]


@dataclass
class RankContext:
    """The live resources of one rank: set up and closed by the executor, shared by its steps."""

    config: JobConfig
    run_dir: Path
    rank: int
    world_size: int
    journal: Journal | None
    budget: Budget
    control: RunControl
    progress: Progress
    reject: Sink
    fail: Callable[[Missing], None]  # a sample that ends in failed.jsonl
    keep: Sink = field(default=lambda record: None)  # what comes out of the rank's last step
    log: Callable[[str], None] = field(default=lambda message: None)
    counts: Counter[str] = field(default_factory=Counter)  # rows the rank's sinks took: kept, failed, not_sent
    stop_reasons: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # extra run.json sections (the Batch API report)
    stats: dict[str, StepStats] = field(default_factory=dict)
    samplers: list[Any] = field(default_factory=list)  # the rank's teacher samplers, for their stage stats
    _resources: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _stoppers: list[Callable[[str], None]] = field(default_factory=list)

    async def resource(self, name: str, opener: Callable[[], Awaitable[tuple[Any, Callable[[], Awaitable[None]] | None]]]) -> Any:
        """Open `name` once per rank (a teacher, a sampler, an index); closed when the rank ends."""
        if name not in self._resources:
            value, closer = await opener()
            self._resources[name] = value
            if closer is not None:
                self._closers.append(closer)
        return self._resources[name]

    def on_stop(self, stopper: Callable[[str], None]) -> None:
        """Register what must stop dispatching when the run is told to stop (budget, Ctrl-C, cancel)."""
        self._stoppers.append(stopper)

    def stop(self, reason: str) -> None:
        if reason not in self.stop_reasons:
            self.stop_reasons.append(reason)
        for stopper in self._stoppers:
            stopper(reason)

    @property
    def stopped(self) -> str | None:
        return self.stop_reasons[0] if self.stop_reasons else None

    async def aclose(self) -> None:
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            await closer()
        self._resources.clear()

    def stats_for(self, step: PipelineStep) -> StepStats:
        return self.stats.setdefault(step.name, StepStats(step.name))


_CURRENT: contextvars.ContextVar[RankContext] = contextvars.ContextVar("distilforge_rank_context")


def current_context() -> RankContext:
    """The rank context of the running pipeline (set by the executor for the rank's tasks)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_context(ctx: RankContext) -> Iterator[RankContext]:
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


class PipelineStep(abc.ABC):
    """A step: configuration only until `run`, which opens what it needs through the rank context."""

    name: str = "step"
    rejects: bool = False  # a filter: listed in the run's funnel

    @abc.abstractmethod
    def run(self, records: AsyncIterator[Any], rank: int = 0, world_size: int = 1) -> AsyncIterator[Any]: ...

    # -- stats, through the base -------------------------------------------------------------
    @property
    def stats(self) -> StepStats:
        return current_context().stats_for(self)

    def stat_update(self, key: str, n: int = 1) -> None:
        stats = self.stats
        if key == "in":
            stats.n_in += n
        elif key == "out":
            stats.n_out += n
        else:
            stats.counters[key] += n

    @contextlib.contextmanager
    def track_time(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stats.seconds += time.perf_counter() - start

    def reject(self, record: Record, reason: str, detail: str) -> None:
        """Tag a reject, keep a few examples for the report, and hand it to the rank's reject sink."""
        record.reject_reason, record.reject_detail = reason, detail
        stats = self.stats
        stats.rejected[reason] += 1
        if len(stats.examples) < EXAMPLES_KEPT:
            stats.examples.append({"seed_id": record.seed_id, "reason": reason, "detail": detail,
                                   "text": record.text[:300]})
        current_context().reject(record)


class Map(PipelineStep):
    """Applies a per-record function (parsing, enrichment)."""

    def __init__(self, name: str, fn: Callable[[Record], Record]):
        self.name = name
        self.fn = fn

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        stats = self.stats
        fn = self.fn
        async for record in records:
            stats.n_in += 1
            yield fn(record)
            stats.n_out += 1


class Filter(PipelineStep):
    """A filter writes only `check`: None keeps the record, a string rejects it with that detail."""

    rejects = True

    @abc.abstractmethod
    def check(self, record: Record) -> str | None: ...

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        stats = self.stats
        clock = time.perf_counter
        async for record in records:
            stats.n_in += 1
            start = clock()
            detail = self.check(record)
            stats.seconds += clock() - start
            if detail is None:
                stats.n_out += 1
                yield record
            else:
                self.reject(record, self.name, detail)


class GroupFilter(PipelineStep):
    """A decision per seed: the stream carries each seed's records back to back, and `decide` sees the
    group whole, returning (record, None) to keep or (record, (reason, detail)) to reject."""

    rejects = True

    @abc.abstractmethod
    def decide(self, group: list[Record]) -> list[tuple[Record, tuple[str, str] | None]]: ...

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        stats = self.stats
        group: list[Record] = []

        def flush() -> list[Record]:
            kept = []
            with self.track_time():
                decisions = self.decide(group)
            for record, verdict in decisions:
                if verdict is None:
                    stats.n_out += 1
                    kept.append(record)
                else:
                    self.reject(record, *verdict)
            return kept

        async for record in records:
            stats.n_in += 1
            if group and record.seed_id != group[0].seed_id:
                for kept in flush():
                    yield kept
                group = []
            group.append(record)
        if group:
            for kept in flush():
                yield kept


def chain(source: AsyncIterator[Any], steps: list[PipelineStep], rank: int = 0, world_size: int = 1) -> AsyncIterator[Any]:
    stream = source
    for step in steps:
        stream = step.run(stream, rank, world_size)
    return stream
