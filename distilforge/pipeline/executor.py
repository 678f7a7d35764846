"""Executors decide *where* a pipeline runs, never *what* runs.

`run_rank` is one rank's whole life, whatever runs it: open the rank (`open_rank`: its journal shard
and output shards), run the pipeline's source and steps (the source takes the rank's share of the
seeds), close everything, and return its stats. Every executor implements `Executor`:
`LocalExecutor` runs the single rank in this process's event loop; `RayExecutor` (pipeline/ray.py) runs
N of them as Ray actors. Both hand each rank the same picklable `Pipeline`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilforge.core.budget import Budget
from distilforge.pipeline.build import Pipeline
from distilforge.pipeline.rank import open_rank, staging_dir
from distilforge.pipeline.steps import Progress, RankContext, RunControl, StepStats, aiter_of, chain
from distilforge.schemas.records import Record
from distilforge.teachers.sampler import SpendStats


@dataclass
class RankResult:
    """What one rank did: its steps' stats, its teacher stages' stats, why it stopped, what it left."""

    rank: int
    steps: dict[str, StepStats] = field(default_factory=dict)
    stages: dict[str, SpendStats] = field(default_factory=dict)
    stop_reasons: list[str] = field(default_factory=list)
    kept: int = 0
    failed: int = 0
    not_sent: int = 0
    notes: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the rank died (a killed Ray worker): what is known of it
    reused: bool = False  # a complete shard of an earlier run with the same pipeline: not run again
    fingerprint: str = ""
    seconds: float = 0.0  # the rank's wall time
    cpu_seconds: float = 0.0  # the CPU its process used meanwhile (for a Ray rank: its worker's)

    @property
    def complete(self) -> bool:
        return not (self.error or self.stop_reasons or self.failed or self.not_sent)

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "steps": {k: _stats_json(v) for k, v in self.steps.items()},
                "stages": {k: _stats_json(v) for k, v in self.stages.items()}, "stop_reasons": self.stop_reasons,
                "kept": self.kept, "failed": self.failed, "not_sent": self.not_sent, "notes": self.notes,
                "sections": self.sections, "error": self.error, "fingerprint": self.fingerprint,
                "seconds": self.seconds, "cpu_seconds": self.cpu_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RankResult:
        result = cls(data["rank"])
        for key in ("stop_reasons", "kept", "failed", "not_sent", "notes", "sections", "error", "fingerprint", "seconds",
                    "cpu_seconds"):
            setattr(result, key, data.get(key, getattr(result, key)))
        result.steps = {k: StepStats(**{**v, "rejected": Counter(v["rejected"]), "counters": Counter(v["counters"])})
                        for k, v in data.get("steps", {}).items()}
        result.stages = {k: SpendStats.from_dict(v) for k, v in data.get("stages", {}).items()}
        return result


def _stats_json(stats: Any) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(stats).items()}


def pipeline_fingerprint(pipeline: Pipeline, world_size: int) -> str:
    """What must match for an earlier run's complete shard to stand for this run's rank."""
    blob = json.dumps({"config": pipeline.config.model_dump(mode="json", exclude={"train", "eval", "output"}),
                       "world_size": world_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reusable(run_dir: Path, rank: int, fingerprint: str) -> RankResult | None:
    """A shard that an earlier run of the same pipeline completed (every sample answered): kept as is."""
    path = staging_dir(run_dir, rank) / "result.json"
    if not path.exists():
        return None
    try:
        result = RankResult.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None
    if result.fingerprint != fingerprint or not result.complete:
        return None
    result.reused = True
    result.stages = {}  # this run sent nothing for it
    return result


def _account(result: RankResult, ctx: RankContext) -> None:
    """What the rank did, read off its context once it closed."""
    result.steps = ctx.stats
    for sampler in ctx.samplers:
        result.stages.setdefault(sampler.stage, SpendStats()).merge(sampler.stats)
        notes = getattr(sampler.teacher, "notes", None)
        if notes is not None:
            result.notes += notes()
    result.stop_reasons = list(ctx.stop_reasons)
    result.sections = dict(ctx.sections)
    result.kept = ctx.counts["kept"]
    result.failed = ctx.counts["failed"]
    result.not_sent = ctx.counts["not_sent"]


async def run_rank(pipeline: Pipeline, run_dir: Path, rank: int, world_size: int, budget: Budget,
                   control: RunControl, progress: Progress, *, result: RankResult | None = None,
                   contexts: list[RankContext] | None = None, stops: list[str] | None = None,
                   log: Any = None) -> RankResult:
    """Run stage 1 of `pipeline` for one rank; its records land in the rank's staging shards.

    `result` is filled in even when the rank is cancelled (a second Ctrl-C), so what it did is reported.
    The executor forwards stops to the context once it is in `contexts`; `stops` holds those that came
    before (the context starts with them, so a stop reaches the rank whenever it arrives).
    """
    staging = staging_dir(run_dir, rank)
    result = result or RankResult(rank)
    result.fingerprint = pipeline_fingerprint(pipeline, world_size)
    started, cpu = time.monotonic(), time.process_time()
    ctx: RankContext | None = None
    try:
        async with open_rank(pipeline.config, run_dir, budget, control, rank=rank, world_size=world_size,
                             progress=progress, staging=staging, stops=stops or (), log=log) as ctx:
            if contexts is not None:
                contexts.append(ctx)  # the executor forwards later stop requests to it
            steps = [pipeline.source, *pipeline.steps] if pipeline.source is not None else pipeline.steps
            records: AsyncIterator[Record] = chain(aiter_of(()), steps, rank, world_size)
            async for record in records:
                ctx.keep(record)
                progress.add_kept()
    finally:
        if ctx is not None:
            _account(result, ctx)
        result.seconds = round(time.monotonic() - started, 3)
        result.cpu_seconds = round(time.process_time() - cpu, 3)
    # Written last: only a rank that got here left a shard a rerun may reuse.
    (staging / "result.json").write_text(json.dumps(result.to_json()), encoding="utf-8")
    return result


class Executor(abc.ABC):
    """Where a pipeline's ranks run, never what runs: the driver's one view of every executor.

    `run` runs `world_size` ranks of the pipeline and returns their results (also kept in `results`, so
    a run cut short still reports what its ranks did); `stop` reaches every rank whenever it comes,
    before a rank starts included; `stop_reasons` holds every stop received.
    """

    kind: str = "local"

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size
        self.results: list[RankResult] = []
        self.stop_reasons: list[str] = []

    def stop(self, reason: str) -> None:
        # The driver repeats a stop a few times a second: kept once, forwarded each time.
        if reason not in self.stop_reasons:
            self.stop_reasons.append(reason)
        self._forward(reason)

    @abc.abstractmethod
    def _forward(self, reason: str) -> None:
        """Hand a stop to the ranks running now (those that start later begin with `stop_reasons`)."""

    @abc.abstractmethod
    async def run(self, pipeline: Pipeline, run_dir: Path, budget: Budget, control: RunControl,
                  progress: Progress) -> list[RankResult]: ...


class LocalExecutor(Executor):
    """One rank in this process's event loop."""

    kind = "local"

    def __init__(self, log: Any = None) -> None:
        super().__init__(1)
        self._contexts: list[RankContext] = []
        self.log = log

    def _forward(self, reason: str) -> None:
        for ctx in self._contexts:
            ctx.stop(reason)

    async def run(self, pipeline: Pipeline, run_dir: Path, budget: Budget, control: RunControl,
                  progress: Progress) -> list[RankResult]:
        earlier = reusable(run_dir, 0, pipeline_fingerprint(pipeline, 1))
        if earlier is not None:
            progress.advance(progress.total)
            self.results = [earlier]
            return self.results
        self.results = [RankResult(0)]
        await run_rank(pipeline, run_dir, 0, 1, budget, control, progress, result=self.results[0],
                       contexts=self._contexts, stops=self.stop_reasons, log=self.log)
        return self.results


def merge_results(results: list[RankResult], order: list[str]) -> tuple[dict[str, StepStats], dict[str, SpendStats]]:
    """Every rank's stats added up, steps in pipeline order."""
    steps: dict[str, StepStats] = {name: StepStats(name) for name in order}
    stages: dict[str, SpendStats] = {}
    for result in results:
        for name, stats in result.steps.items():
            steps.setdefault(name, StepStats(name)).merge(stats)
        for name, stats in result.stages.items():
            stages.setdefault(name, SpendStats()).merge(stats)
    return steps, stages


def rejected_by_reason(steps: dict[str, StepStats]) -> Counter[str]:
    total: Counter[str] = Counter()
    for stats in steps.values():
        total.update(stats.rejected)
    return total


