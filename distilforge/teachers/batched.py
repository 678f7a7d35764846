"""In-process teachers answer fastest in batches: this base gathers concurrent requests into them.

Requests from many async workers wait in a queue; one background task takes up to `batch_size`
sequences, runs the blocking `generate_batch` in a thread (so the event loop keeps serving I/O), and
hands each caller its completions. Subclasses write only `load` and `generate_batch`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from dataclasses import dataclass

from distilforge.schemas.records import TeacherResponse
from distilforge.teachers.base import AttemptFailed, Teacher


@dataclass
class _Job:
    messages: list[dict[str, str]]
    n: int
    future: asyncio.Future[TeacherResponse]


class BatchedTeacher(Teacher):
    def __init__(self, model: str, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        # Enough callers waiting to fill the next batch while the current one runs.
        self.max_concurrency = batch_size * 2
        self.batches = 0  # generate_batch calls: fewer than requests when callers shared batches
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (blocking); called once, in a worker thread."""

    @abc.abstractmethod
    def generate_batch(self, requests: list[tuple[list[dict[str, str]], int]]) -> list[TeacherResponse]:
        """Blocking: one response (with n completions) per (messages, n) request."""

    async def start(self) -> None:
        if self._worker is not None:
            return
        await asyncio.to_thread(self.load)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run_batches())

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def attempt(self, messages: list[dict[str, str]], n: int = 1) -> TeacherResponse:
        if self._worker is None:
            await self.start()
        assert self._queue is not None
        future: asyncio.Future[TeacherResponse] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(messages, n, future))
        return await future

    async def _run_batches(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            # Give workers a moment to queue more: a fuller batch costs little more than a small one.
            await asyncio.sleep(0.01)
            rows = jobs[0].n
            while not self._queue.empty() and rows < self.batch_size:
                job = self._queue.get_nowait()
                jobs.append(job)
                rows += job.n
            self.batches += 1
            try:
                results = await asyncio.to_thread(self.generate_batch, [(j.messages, j.n) for j in jobs])
            except Exception as exc:  # a failed batch fails its callers, not the worker
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(AttemptFailed("engine", f"{type(self).__name__}: generation failed: "
                                                               f"{exc}", retryable=False))
                continue
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
