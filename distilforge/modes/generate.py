"""The generation step: seeds in, one Record per teacher sample out, as responses arrive.

Each seed needs `samples_per_seed` samples. Answers already in the journal are replayed; the rest are
requested (n per request where the teacher supports it), with bounded concurrency and a bounded output
queue, so memory does not grow with the dataset. Before a request goes out its worst-case cost is
reserved against the budget and persisted; the answer is committed to the journal before any later
step sees it. When the budget or a Ctrl-C says stop, no new request is dispatched, what is in flight
finishes, and every record produced so far flows on.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from distilforge.core.budget import Budget
from distilforge.core.config import GenerationConfig
from distilforge.core.grading import grade, split_answer
from distilforge.core.journal import Journal, request_key
from distilforge.core.records import Record, Seed
from distilforge.core.steps import PipelineStep
from distilforge.core.tokens import prompt_tokens_upper_bound
from distilforge.modes import Prompter, make_prompter, parse_record
from distilforge.quality.policy import majority
from distilforge.teachers.base import Teacher, TeacherError

_DONE = object()


class GenerateStats:
    def __init__(self) -> None:
        self.requests_sent = 0
        self.requests_succeeded = 0
        self.requests_failed = 0
        self.samples_from_journal = 0
        self.samples_new = 0
        self.samples_failed = 0
        self.samples_not_sent = 0  # left undone by a budget stop or an interrupt
        self.samples_saved = 0  # adaptive sampling: samples never requested because answers agreed
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_request: float | None = None
        self.last_response: float | None = None


class Generate(PipelineStep):
    name = "generate"

    def __init__(
        self,
        teacher: Teacher,
        journal: Journal,
        generation: GenerationConfig,
        teacher_identity: dict[str, Any],
        *,
        budget: Budget,
        completion_budget: int,
        on_progress: Callable[[int, int, int], None] | None = None,
        supports_n: bool = True,
        journal_only: bool = False,
        prompter: Prompter | None = None,
    ):
        self.teacher = teacher
        self.journal = journal
        self.generation = generation
        self.identity = teacher_identity
        self.budget = budget
        self.completion_budget = completion_budget
        self.on_progress = on_progress or (lambda samples, p, c: None)
        self.supports_n = supports_n
        self.journal_only = journal_only  # Batch API runs: answers come from the journal only
        self.stats = GenerateStats()
        self.prompter = prompter or make_prompter(generation)
        self.stopped: str | None = None  # "budget" | "interrupted"
        # Request ids: unique per run (pid + start time) and cheap (uuid4 reads the OS RNG each call).
        self._run_token = f"{os.getpid():x}{int(time.time() * 1000):x}"
        self._ids = itertools.count()

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason

    def _record(self, seed: Seed, index: int, messages: list[dict[str, str]], fields: dict[str, Any], text: str,
                finish: str | None, p_tokens: int, c_tokens: int, model: str) -> Record:
        record = Record(
            seed_id=seed.seed_id,
            sample_index=index,
            question=seed.question,
            gold=seed.gold,
            answer_type=seed.answer_type,
            prompt=messages,
            teacher_model=model,
            text=text,
            finish_reason=finish,
            prompt_tokens=p_tokens,
            completion_tokens=c_tokens,
        )
        for name, value in fields.items():
            setattr(record, name, value)
        raw_gold = seed.meta.get("raw_answer")
        if raw_gold is not None:
            _, stated = split_answer(raw_gold)
            record.meta["gold_raw"] = stated if stated is not None else raw_gold
        return record

    def worst_case_usd(self, messages: list[dict[str, str]], n: int) -> float:
        return self.budget.cost(prompt_tokens_upper_bound(messages), self.completion_budget * n)

    async def _fail(self, seed: Seed, request_id: str | None, missing: list[tuple[str, int]], error: str,
                    retryable: bool) -> None:
        self.stats.samples_failed += len(missing)
        await self.journal.fail_async(request_id, seed.seed_id, missing, error, retryable,
                                      replace=not self.journal_only)
        self.on_progress(len(missing), 0, 0)

    async def _request(self, seed: Seed, messages: list[dict[str, str]], fields: dict[str, Any],
                       missing: list[tuple[str, int]], out: list[Record]) -> None:
        """Ask for `missing` samples; a server may return fewer choices than n, so loop until done."""
        loop = asyncio.get_running_loop()
        while missing:
            if self.journal_only:
                if self.stopped == "budget":
                    self.stats.samples_not_sent += len(missing)
                    self.on_progress(len(missing), 0, 0)
                else:
                    await self._fail(seed, None, missing, "no answer from the batch", True)
                return
            n = len(missing) if self.supports_n else 1
            reserve = self.worst_case_usd(messages, n)
            if self.stopped or not self.budget.try_reserve(reserve):
                self.stop("budget")
                self.stats.samples_not_sent += len(missing)
                self.on_progress(len(missing), 0, 0)
                return
            request_id = None
            if self.budget.max_usd is not None:
                # Persisted before sending: if we crash now, the next run counts it at worst case.
                # (Without a cap nothing depends on it, so the write and its wait are skipped.)
                request_id = f"{self._run_token}-{next(self._ids)}"
                await self.journal.begin_async(request_id, seed.seed_id, [k for k, _ in missing[:n]], reserve)
            self.stats.requests_sent += 1
            if self.stats.first_request is None:
                self.stats.first_request = loop.time()
            try:
                # The slot covers the request only, not the journal writes around it.
                async with self._slots:
                    response = await self.teacher.complete(messages, n=n)
            except TeacherError as exc:
                self.budget.release(reserve)
                self.stats.requests_failed += 1
                await self._fail(seed, request_id, missing, str(exc), exc.retryable)
                return
            self.stats.requests_succeeded += 1
            self.stats.last_response = loop.time()
            response.completions = response.completions[: len(missing)]
            taken, missing = missing[: len(response.completions)], missing[len(response.completions):]
            cost = self.budget.cost(response.prompt_tokens, response.completion_tokens)
            # Committed before it is used; the same transaction closes the reservation.
            shares = await self.journal.commit_async(seed.seed_id, taken, response, cost_usd=cost,
                                                     request_id=request_id)
            self.budget.settle(reserve, cost)
            self.stats.prompt_tokens += response.prompt_tokens
            self.stats.completion_tokens += response.completion_tokens
            self.stats.samples_new += len(taken)
            self.on_progress(len(taken), response.prompt_tokens, response.completion_tokens)
            for (_, index), comp, (p, c) in zip(taken, response.completions, shares, strict=True):
                out.append(self._record(seed, index, messages, fields, comp.text, comp.finish_reason, p, c,
                                        response.model))

    def _replay(self, seed: Seed, indices: range, out: list[Record]) -> tuple[list[dict[str, str]], dict[str, Any],
                                                                            list[tuple[str, int]]]:
        """Collect what the journal already holds for `seed`; return its messages, fields and what is missing."""
        messages, fields = self.prompter.build(seed)
        keys = [(request_key(self.identity, messages, i), i) for i in indices]
        found = self.journal.lookup([k for k, _ in keys])
        for key, index in keys:
            if key in found:
                comp, p, c, model = found[key]
                self.stats.samples_from_journal += 1
                self.on_progress(1, 0, 0)
                out.append(self._record(seed, index, messages, fields, comp.text, comp.finish_reason, p, c, model))
        return messages, fields, [(k, i) for k, i in keys if k not in found]

    async def _sample(self, seed: Seed, indices: range, out: list[Record]) -> None:
        messages, fields, missing = self._replay(seed, indices, out)
        if not missing:
            return
        groups = [missing] if self.supports_n else [[m] for m in missing]
        if len(groups) == 1:
            await self._request(seed, messages, fields, groups[0], out)
        else:
            await asyncio.gather(*(self._request(seed, messages, fields, g, out) for g in groups))

    def _enough(self, seed: Seed, records: list[Record]) -> bool:
        """Adaptive sampling: gold hit often enough, or (no gold) enough answers agree."""
        g = self.generation
        parsed = [parse_record(r) for r in records]
        if seed.gold is not None:
            wanted = 1 if g.keep == "one" else (g.max_per_seed or 1)
            return sum(1 for r in parsed if grade(r.meta.get("answer_raw"), seed.gold, seed.answer_type,
                                                  r.meta.get("gold_raw")) and r.finish_reason != "length") >= wanted
        answer, share = majority(parsed)
        agree = g.adaptive.agree if g.adaptive else 0
        return answer is not None and round(share * sum(1 for r in parsed if r.answer is not None)) >= agree

    async def _seed(self, seed: Seed, out: asyncio.Queue[Any]) -> None:
        k = self.generation.samples_per_seed
        records: list[Record] = []
        adaptive = self.generation.adaptive
        if adaptive is None:
            await self._sample(seed, range(k), records)
        else:
            # Rounds of `batch` samples until the answers settle; sample indices stay 0..k-1 so a
            # resumed run asks the same requests and replays them from the journal.
            step = adaptive.batch or adaptive.agree
            done = 0
            while done < k and not self.stopped:
                await self._sample(seed, range(done, min(k, done + step)), records)
                done = min(k, done + step)
                if self._enough(seed, records):
                    break
            self.stats.samples_saved += k - done
            self.on_progress(k - done, 0, 0)
        # The whole group goes downstream at once, so later per-seed steps see it contiguous.
        await out.put(records)

    async def run(self, seeds: AsyncIterator[Seed]) -> AsyncIterator[Record]:
        concurrency = self.teacher.max_concurrency
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=concurrency * 4)
        self._slots = asyncio.Semaphore(concurrency)
        # Bounds how many seeds are open at once, so the seed stream is read lazily.
        open_seeds = asyncio.Semaphore(concurrency * 2)
        errors: list[BaseException] = []

        async def one(seed: Seed) -> None:
            try:
                await self._seed(seed, out)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                errors.append(exc)
            finally:
                open_seeds.release()

        async def feed() -> None:
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for seed in seeds:
                    await open_seeds.acquire()
                    if self.stopped:
                        # Seeds after a stop still replay what the journal holds, but send nothing.
                        open_seeds.release()
                        replayed: list[Record] = []
                        _, _, missing = self._replay(seed, range(self.generation.samples_per_seed), replayed)
                        await out.put(replayed)
                        self.stats.samples_not_sent += len(missing)
                        self.on_progress(len(missing), 0, 0)
                        continue
                    task = asyncio.create_task(one(seed))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for task in tasks:
                    task.cancel()
                await out.put(_DONE)

        feeder = asyncio.create_task(feed())
        try:
            while (item := await out.get()) is not _DONE:
                for record in item:
                    yield record
            await feeder
            if errors:
                raise errors[0]
        finally:
            if not feeder.done():
                feeder.cancel()
