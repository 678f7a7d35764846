"""The same job on a Ray cluster: N ranks as Ray actors, one budget actor they all reserve against.

Each rank is an async actor running `run_rank` (the same function the local executor runs) over its
shard of the seeds (a hash of `seed_id`), with its own journal shard and output shards in the run
folder, which must be on storage every node sees. The budget lives in one actor, so the cap holds
across ranks; each rank paces its endpoint at 1/N of the configured (or learnt) rate limits. The
driver polls the ranks' progress, forwards stops (Ctrl-C, a cancelled job, a lost lease) and, once
they are done, runs the global filters and writes the dataset like a local run. A rank whose
actor dies leaves an incomplete shard; a rerun keeps the ranks that completed and resumes the
others from their journals. `backend: vllm-offline` places each rank on its own GPUs
(`tensor_parallel_size` of them) and feeds its engine in large batches.

Without `executor.address` a local Ray is started for the run and shut down after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from distilforge.core.budget import Budget
from distilforge.core.redact import redact
from distilforge.pipeline.build import Pipeline
from distilforge.pipeline.executor import Executor, RankResult, pipeline_fingerprint, reusable, run_rank
from distilforge.pipeline.steps import Progress, RankContext, RunControl
from distilforge.schemas import ExecutorConfig
from distilforge.teachers import rank_resources

POLL_SECONDS = 0.25


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        from distilforge.schemas import ConfigError

        raise ConfigError("executor.kind ray needs Ray: pip install 'distilforge[ray]'") from None
    return ray


class RemoteBudget(Budget):
    """A rank's view of the run's budget: every reservation and settlement goes to the budget actor."""

    def __init__(self, prices: Any, max_usd: float | None, actor: Any):
        super().__init__(prices, max_usd)
        self.actor = actor

    async def reserve(self, usd: float) -> bool:
        return await self.actor.reserve.remote(usd)

    async def reserve_when_possible(self, usd: float) -> bool:
        return await self.actor.reserve_when_possible.remote(usd)

    async def settle(self, reserved_usd: float, actual_usd: float, stage: str) -> None:
        await self.actor.settle.remote(reserved_usd, actual_usd, stage)

    async def charge_unknown(self, reserved_usd: float, stage: str) -> None:
        await self.actor.charge_unknown.remote(reserved_usd, stage)

    async def release(self, reserved_usd: float) -> None:
        await self.actor.release.remote(reserved_usd)


class _BudgetHolder:
    """The run's one budget, in an actor: ranks' calls are serialised on its event loop."""

    def __init__(self, budget: Budget):
        self.budget = budget

    async def reserve(self, usd: float) -> bool:
        return await self.budget.reserve(usd)

    async def reserve_when_possible(self, usd: float) -> bool:
        return await self.budget.reserve_when_possible(usd)

    async def settle(self, reserved: float, actual: float, stage: str) -> None:
        await self.budget.settle(reserved, actual, stage)

    async def charge_unknown(self, reserved: float, stage: str) -> None:
        await self.budget.charge_unknown(reserved, stage)

    async def release(self, reserved: float) -> None:
        await self.budget.release(reserved)

    async def close(self) -> None:
        await self.budget.close()

    def state(self) -> dict[str, Any]:
        return self.budget.state()


class _RankControl(RunControl):
    """What a rank needs of the driver's control: the journal fence. Stops arrive through `stop`."""

    def __init__(self, fence: int | None, cache: str | None = None):
        self._fence = fence
        self._cache = cache

    def fence(self) -> int | None:
        return self._fence

    def response_cache(self) -> Path | None:
        return None if self._cache is None else Path(self._cache)


class _Rank:
    """One rank in a Ray worker process."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.contexts: list[RankContext] = []
        # Every stop received, even before `run` started (a slow worker): the rank's context starts with them.
        self.stops: list[str] = []

    async def run(self, pipeline: Pipeline, run_dir: str, rank: int, world_size: int, budget_actor: Any,
                  prices: Any, max_usd: float | None, fence: int | None, cache: str | None = None) -> dict[str, Any]:
        budget = RemoteBudget(prices, max_usd, budget_actor)
        result = RankResult(rank)
        await run_rank(pipeline, Path(run_dir), rank, world_size, budget, _RankControl(fence, cache), self.progress,
                       result=result, contexts=self.contexts, stops=self.stops)
        return result.to_json()

    def stop(self, reason: str) -> None:
        # The driver repeats a stop a few times a second: kept once.
        if reason not in self.stops:
            self.stops.append(reason)
        for ctx in self.contexts:
            ctx.stop(reason)

    def counts(self) -> tuple[int, int, int, float]:
        p = self.progress
        return p.done, p.kept, p.tokens, p.spend


class RayExecutor(Executor):
    """N ranks as Ray actors (`executor: {kind: ray, workers: N, address: ...}`)."""

    kind = "ray"

    def __init__(self, config: ExecutorConfig):
        super().__init__(config.workers)
        self.address = config.address
        self._actors: list[Any] = []

    def _forward(self, reason: str) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):
                actor.stop.remote(reason)

    def _start(self, ray: Any) -> bool:
        """Connect to the cluster (or start a local one); True when this run started it."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("DISTILFORGE_RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
            return True
        ray.init(num_cpus=max(self.world_size, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        return True

    def _rank_options(self, pipeline: Pipeline) -> dict[str, Any]:
        teacher = pipeline.config.teacher
        if teacher.backend == "vllm-offline":  # one engine per GPU, or per tensor-parallel group
            gpus = int(teacher.engine_args.get("tensor_parallel_size", 1))
            return {"num_cpus": 1, "num_gpus": gpus}
        return {"num_cpus": 1}

    async def run(self, pipeline: Pipeline, run_dir: Path, budget: Budget, control: RunControl,
                  progress: Progress) -> list[RankResult]:
        ray = _ray()
        started_here = self._start(ray)
        try:
            return await self._run(ray, pipeline, run_dir, budget, control, progress)
        finally:
            for actor in self._actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            self._actors = []
            if started_here:
                ray.shutdown()

    async def _run(self, ray: Any, pipeline: Pipeline, run_dir: Path, budget: Budget, control: RunControl,
                   progress: Progress) -> list[RankResult]:
        fingerprint = pipeline_fingerprint(pipeline, self.world_size)
        earlier = {r: reusable(run_dir, r, fingerprint) for r in range(self.world_size)}
        todo = [r for r, result in earlier.items() if result is None]
        holder = ray.remote(num_cpus=0, max_concurrency=1000)(_BudgetHolder).remote(budget.portable())
        rank_class = ray.remote(max_concurrency=1000)(_Rank)
        tag = f"distilforge-{os.getpid()}-{id(self):x}"  # named, so an operator (or a test) can find a rank
        resources = rank_resources(pipeline.config.teacher)  # the teacher's backend says what a rank holds
        self._actors = [rank_class.options(name=f"{tag}-rank-{rank}", **resources).remote() for rank in todo]
        for reason in self.stop_reasons:
            self._forward(reason)
        cache = control.response_cache()
        refs = [actor.run.remote(pipeline, str(run_dir), rank, self.world_size, holder, budget.prices, budget.max_usd,
                                 control.fence(), None if cache is None else str(cache)) for rank, actor in zip(todo, self._actors, strict=True)]
        base = sum(1 for r in earlier.values() if r is not None) * progress.total // max(1, self.world_size)
        poller = asyncio.create_task(self._poll(progress, base))
        try:
            outcomes = await asyncio.gather(*refs, return_exceptions=True)
        finally:
            poller.cancel()
        await holder.close.remote()
        budget.absorb(await holder.state.remote())
        self.results = [r for r in earlier.values() if r is not None]
        for rank, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, ray.exceptions.RayTaskError):  # the rank raised: say what
                cause = outcome.cause if outcome.cause is not None else outcome
                self.results.append(RankResult(rank, error=redact(f"{type(cause).__name__}: {cause}")[:500]))
            elif isinstance(outcome, BaseException):
                self.results.append(RankResult(rank, error=f"the rank's worker died ({type(outcome).__name__})"))
            else:
                self.results.append(RankResult.from_json(outcome))
        self.results.sort(key=lambda r: r.rank)
        return self.results

    async def _poll(self, progress: Progress, base: int) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                counts = await asyncio.gather(*(a.counts.remote() for a in self._actors))
            except Exception:
                continue
            progress.done = base + sum(c[0] for c in counts)
            progress.kept = sum(c[1] for c in counts)
            progress.tokens = sum(c[2] for c in counts)
            progress.spend = sum(c[3] for c in counts)

