"""The Sampler: the one path every paid teacher call of a run goes through.

For a seed's messages and the sample indices it needs, it replays what the journal already holds,
then for the rest: reserves the worst case against the run's `Budget`, persists the reservation,
makes one attempt through the teacher (with one concurrency bound, requests on the wire), commits the
answer to the journal before anyone uses it, and settles the budget to the reported usage. Failed
attempts are retried here (backoff with jitter, Retry-After honoured, `teacher.retry` bounds), and
each one is settled as what it may have cost:

- refused by the server (429, a 5xx with a readable error) or never sent: released, nothing billed;
- outcome unknown (timeout or dropped connection after sending, an unreadable 200): charged at its
  worst case, before the retry is reserved, and reported as `unknown_outcome_usd`;
- a 200 without `usage`: settled at its reservation, never at 0 (`usage_missing`).

Generation, the judge, instruction modes, the Batch API path and teacher evaluation all sample
through this class, each as a named stage of the same budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from distilforge.core.budget import Budget
from distilforge.core.journal import Journal, key_json, request_keys
from distilforge.core.response_cache import ResponseCache, cache_keys
from distilforge.core.tokens import prompt_tokens_upper_bound
from distilforge.pipeline.steps import Progress, RankContext
from distilforge.schemas import Prices, RetryConfig, TeacherConfig
from distilforge.schemas.records import Completion, Missing, TeacherResponse
from distilforge.teachers.base import AttemptFailed, Teacher

RETRY_AFTER_CAP = 120.0  # never sleep longer than this on a server's say-so


@dataclass
class SpendStats:
    """Requests, tokens and failures of one stage (generate, judge, eval_teacher) on one rank."""

    sent: int = 0  # logical requests dispatched (a retry is not a new one)
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retried: int = 0
    rate_limited: int = 0
    usage_missing: int = 0
    unknown_outcome: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # part of completion_tokens, as the server reported them
    cached_prompt_tokens: int = 0  # part of prompt_tokens, as the server reported them
    samples_from_journal: int = 0
    samples_new: int = 0
    samples_failed: int = 0
    samples_not_sent: int = 0
    samples_cached: int = 0  # answered by the response cache shared across run folders, at $0
    first_error: str | None = None
    first_request: float | None = None  # time.time() of the first attempt
    last_done: float | None = None  # time.time() an attempt last ended, failed ones included
    errors: Counter[str] = field(default_factory=Counter)

    def merge(self, other: SpendStats) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if name == "errors":
                mine.update(value)
            elif name == "first_error":
                self.first_error = mine or value
            elif name in ("first_request", "last_done"):
                if value is not None:
                    pick = min if name == "first_request" else max
                    setattr(self, name, value if mine is None else pick(mine, value))
            else:
                setattr(self, name, mine + value)

    def report(self) -> dict[str, Any]:
        return {
            "requests": {"sent": self.sent, "succeeded": self.succeeded, "failed": self.failed,
                         "attempts": self.attempts, "retried": self.retried, "rate_limited": self.rate_limited,
                         "usage_missing": self.usage_missing, "unknown_outcome": self.unknown_outcome,
                         "cached": self.samples_cached, "errors": dict(self.errors)},
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "reasoning": self.reasoning_tokens, "cached_prompt": self.cached_prompt_tokens},
            "samples": {"from_journal": self.samples_from_journal, "new": self.samples_new,
                        "cached": self.samples_cached, "failed": self.samples_failed,
                        "not_sent": self.samples_not_sent},
            "wall_seconds": round(self.last_done - self.first_request, 3)
            if self.first_request is not None and self.last_done is not None else 0.0,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpendStats:
        stats = cls()
        for name, value in data.items():
            setattr(stats, name, Counter(value) if name == "errors" else value)
        return stats


@dataclass(slots=True)
class Sample:
    index: int
    completion: Completion
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass
class Outcome:
    """What one seed's sampling produced: answers, failures (index, error, retryable), and not sent."""

    samples: list[Sample] = field(default_factory=list)
    failed: list[tuple[int, str, bool]] = field(default_factory=list)
    not_sent: list[int] = field(default_factory=list)

    def missing(self, seed_id: str, stopped: str | None) -> list[Missing]:
        """What the seed lacks for good: each failure, then each sample left unsent by a stop."""
        return ([Missing(seed_id, index, "failed", error) for index, error, _ in self.failed]
                + [Missing.not_sent(seed_id, index, stopped) for index in self.not_sent])


class Sampler:
    def __init__(self, teacher: Teacher, journal: Journal, budget: Budget, *, stage: str,
                 identity: dict[str, Any], completion_budget: int, prices: Prices | None = None,
                 supports_n: bool = True,
                 retry: RetryConfig | None = None, progress: Progress | None = None,
                 on_budget: Callable[[str], None] | None = None, journal_only: bool = False,
                 cache: ResponseCache | None = None, endpoint: list[str] | None = None):
        self.teacher = teacher
        self.journal = journal
        self.budget = budget
        self.stage = stage
        self.prices = prices if prices is not None else budget.prices  # this teacher's; the cap is the run's
        self.identity = identity
        self.completion_budget = completion_budget
        self.supports_n = supports_n
        self.retry = retry or RetryConfig()
        self.progress = progress or Progress()
        self.on_budget = on_budget or (lambda reason: None)
        self.journal_only = journal_only  # Batch API runs: answers come from the journal only
        self.cache = cache  # answers shared across run folders; a hit costs nothing and reserves nothing
        self.endpoint = endpoint or []
        # Encoded once: every key of the run hashes them (see core.journal.key_json).
        self._identity_json = key_json(identity)
        self._endpoint_json = key_json(self.endpoint)
        self.stats = SpendStats()
        self.stopped: str | None = None
        self._stopping = asyncio.Event()  # cuts a retry's backoff short: a stopped run waits for no timer
        self._slots = asyncio.Semaphore(teacher.max_concurrency)
        # A fresh journal holds nothing to replay: skip the lookups (they are most of a seed's cost).
        self._replay = journal.count() > 0
        # Request ids: unique per run (pid + start time) and cheap (uuid4 reads the OS RNG each call).
        self._run_token = f"{self.stage[:2]}{os.getpid():x}{int(time.time() * 1000):x}"
        self._ids = itertools.count()

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
            self._stopping.set()

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the run is stopped meanwhile (a backoff never delays a cancel)."""
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin on Python 3.10
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _stop_if_key_refused(self, failure: AttemptFailed) -> None:
        """The key is refused and nothing was ever answered: every other request would be too."""
        if failure.kind in ("401", "403") and not self.stats.succeeded and not self.stats.samples_from_journal:
            self.stop("key_refused")
            self.on_budget("key_refused")

    def replay_from_journal(self) -> None:
        """Look answers up again (the Batch API path filled the journal after this sampler opened)."""
        self._replay = True

    def keys(self, messages: list[dict[str, str]], indices: range | list[int]) -> list[tuple[str, int]]:
        return list(zip(request_keys(self._identity_json, messages, indices), indices, strict=True))

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        return self.prices.cost(prompt_tokens, completion_tokens, cached_tokens) if self.prices else 0.0

    def worst_case_usd(self, messages: list[dict[str, str]], n: int) -> float:
        return self.cost(prompt_tokens_upper_bound(messages), self.completion_budget * n)

    async def replay(self, messages: list[dict[str, str]],
                     indices: range | list[int]) -> tuple[list[Sample], list[tuple[str, int]]]:
        """What the journal already holds for these samples, and the (key, index) pairs still missing."""
        keys = self.keys(messages, indices)
        if not self._replay:
            return [], keys
        found = await self.journal.lookup_async([k for k, _ in keys])
        samples = []
        for key, index in keys:
            hit = found.get(key)
            if hit is not None:
                comp, p, c, model = hit
                samples.append(Sample(index, comp, p, c, model))
        if samples:
            self.stats.samples_from_journal += len(samples)
            self.progress.advance(len(samples))
        return samples, [(k, i) for k, i in keys if k not in found]

    async def sample(self, seed_id: str, messages: list[dict[str, str]], indices: range | list[int], *,
                     again: bool = False) -> Outcome:
        """Every requested sample: from the journal, or asked for (n per request where supported).

        `again`: a second pass over samples whose requests already failed once (counted as retries of
        those requests, not as new ones).
        """
        found, missing = await self.replay(messages, indices)
        outcome = Outcome(samples=found)
        if missing and self.cache is not None and not self.cache.empty_at_open and not self.journal_only:
            missing = await self._from_cache(seed_id, messages, missing, outcome)
        if not missing:
            return outcome
        if self.journal_only:
            errors = await asyncio.to_thread(self.journal.dead_letter_errors, [k for k, _ in missing])
            for key, index in missing:
                self._unsent_or_failed(outcome, [(key, index)], errors.get(key, "no answer from the batch"))
            return outcome
        groups = [missing] if self.supports_n else [[m] for m in missing]
        if len(groups) == 1:
            await self._request(seed_id, messages, groups[0], outcome, again)
        else:
            await asyncio.gather(*(self._request(seed_id, messages, g, outcome, again) for g in groups))
        return outcome

    def _cache_keys(self, messages: list[dict[str, str]], group: list[tuple[str, int]]) -> list[str]:
        return cache_keys(self._endpoint_json, self._identity_json, messages, [i for _, i in group])

    async def _from_cache(self, seed_id: str, messages: list[dict[str, str]], missing: list[tuple[str, int]],
                          outcome: Outcome) -> list[tuple[str, int]]:
        """Answers the cache holds: committed to the journal at $0 (a resume replays them), no reservation."""
        assert self.cache is not None
        keys = self._cache_keys(messages, missing)
        try:
            hits = await self.cache.lookup_async(keys)
        except sqlite3.Error:
            self.cache = None  # an unreadable cache costs money, never the run
            return missing
        rest = []
        for ckey, (key, index) in zip(keys, missing, strict=True):
            hit = hits.get(ckey)
            if hit is None:
                rest.append((key, index))
                continue
            comp, p, c, model = hit
            # Journalled with no tokens: the folder's token totals are what its teachers billed.
            await self.journal.commit_async(seed_id, [(key, index)], TeacherResponse([replace(comp)], 0, 0, model),
                                            cost_usd=0.0)
            outcome.samples.append(Sample(index, comp, p, c, model))
            self.stats.samples_cached += 1
            self.progress.advance(1)
        return rest

    async def _to_cache(self, messages: list[dict[str, str]], taken: list[tuple[str, int]],
                        completions: list[Completion], shares: list[tuple[int, int]], model: str) -> None:
        if self.cache is None:
            return
        keys = self._cache_keys(messages, taken)
        try:
            await self.cache.put_async([(k, comp, p, c, model) for k, comp, (p, c)
                                        in zip(keys, completions, shares, strict=True)])
        except sqlite3.Error:
            self.cache = None  # the answer is in the journal; only later runs miss it

    def _unsent_or_failed(self, outcome: Outcome, missing: list[tuple[str, int]], error: str) -> None:
        if self.stopped:
            outcome.not_sent += [i for _, i in missing]
            self.stats.samples_not_sent += len(missing)
        else:
            outcome.failed += [(i, error, True) for _, i in missing]
            self.stats.samples_failed += len(missing)
        self.progress.advance(len(missing))

    def _delay(self, failure: AttemptFailed, attempt: int) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, RETRY_AFTER_CAP) + random.uniform(0, 0.05)
        # Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s ... capped at 30 s.
        return random.uniform(0, min(30.0, 0.25 * 2 ** (attempt - 1)))

    async def _request(self, seed_id: str, messages: list[dict[str, str]], group: list[tuple[str, int]],
                       outcome: Outcome, again: bool = False) -> None:
        stats, journal, budget, teacher = self.stats, self.journal, self.budget, self.teacher
        attempts, started = 0, time.monotonic()
        if again:
            stats.samples_failed -= len(group)  # counted again below if they fail again
        counted = False  # `sent` counts a request once, when its first attempt goes out
        while group:
            n = len(group)
            reserve = self.worst_case_usd(messages, n)
            # Reserved and persisted before the concurrency slot: the journal write overlaps the
            # requests on the wire instead of holding a slot. Waiting seeds may hold reservations,
            # which can only delay, never stop, a run: a reservation that does not fit waits for
            # those in flight to settle, and the run stops only when one cannot fit on its own.
            if self.stopped or not await budget.reserve_when_possible(reserve):
                if not self.stopped:
                    self.stop("budget")
                    self.on_budget("budget")
                self._not_sent(outcome, group)
                return
            request_id = f"{self._run_token}-{next(self._ids)}"
            # Persisted before sending: if the process dies now, later runs count it at worst case.
            await journal.begin_async(request_id, seed_id, [k for k, _ in group], reserve)
            async with self._slots:
                if self.stopped and self.stopped != "budget":  # stopped while waiting for a slot: not sent
                    await journal.release_async(request_id)
                    await budget.release(reserve)
                    self._not_sent(outcome, group)
                    return
                stats.attempts += 1
                if again and not counted:
                    stats.retried += 1
                elif not counted:
                    stats.sent += 1
                counted = True
                if stats.first_request is None:
                    stats.first_request = time.time()
                try:
                    response = await teacher.attempt(messages, n)
                    failure = None
                except AttemptFailed as exc:
                    failure = exc
                    self._stop_if_key_refused(exc)  # before this slot frees, so no waiting request goes out
            if failure is not None:
                await self._close_failed_attempt(failure, request_id, seed_id, reserve)
                attempts += 1
                delay = self._delay(failure, attempts)
                if (not failure.retryable or attempts >= self.retry.max_attempts
                        or time.monotonic() - started + delay > self.retry.max_wait_s):
                    error = f"{failure} (after {attempts} attempt{'s' if attempts > 1 else ''})"
                    stats.failed += 0 if again else 1
                    again = False
                    stats.samples_failed += n
                    stats.first_error = stats.first_error or error
                    outcome.failed += [(i, error, failure.retryable) for _, i in group]
                    await journal.fail_async(seed_id, group, error, failure.retryable)
                    self.progress.advance(n)
                    return
                stats.retried += 1
                await self.pause(delay)  # then sent again or, if stopped meanwhile, recorded as not sent
                continue
            stats.last_done = time.time()
            stats.succeeded += 1
            if again:  # it had failed; the second pass answered it
                stats.failed -= 1
                again = False
            group = await self._commit_answer(response, seed_id, messages, group, outcome, request_id, reserve)
            if group:  # the server sent fewer choices than n (it may ignore n): ask again for the rest
                attempts, started, counted = 0, time.monotonic(), False


    def _not_sent(self, outcome: Outcome, group: list[tuple[str, int]]) -> None:
        outcome.not_sent += [i for _, i in group]
        self.stats.samples_not_sent += len(group)
        self.progress.advance(len(group))

    async def _close_failed_attempt(self, failure: AttemptFailed, request_id: str, seed_id: str,
                                    reserve: float) -> None:
        """A failed attempt's reservation: charged at its worst case when the server may have billed it
        (an unknown outcome), released otherwise."""
        stats = self.stats
        stats.last_done = time.time()
        stats.errors[failure.kind] += 1
        if failure.kind == "429":
            stats.rate_limited += 1
        if failure.maybe_billed:
            stats.unknown_outcome += 1
            await self.journal.charge_async(request_id, seed_id, reserve, failure.kind)
            await self.budget.charge_unknown(reserve, self.stage)
            self.progress.advance(0, 0, reserve)
        else:
            await self.journal.release_async(request_id)
            await self.budget.release(reserve)

    async def _commit_answer(self, response: TeacherResponse, seed_id: str, messages: list[dict[str, str]],
                             group: list[tuple[str, int]], outcome: Outcome, request_id: str,
                             reserve: float) -> list[tuple[str, int]]:
        """Commit an answer (before anything uses it), settle its reservation, count it; returns the
        samples still missing when the server sent fewer choices than asked."""
        stats = self.stats
        completions = response.completions[:len(group)]
        response.completions = completions
        if response.usage_reported:
            cost = self.cost(response.prompt_tokens, response.completion_tokens, response.cached_tokens)
        else:
            stats.usage_missing += 1
            cost = reserve  # unknown usage: the worst case, never 0
        taken, rest = group[: len(completions)], group[len(completions):]
        # Committed before it is used; the same transaction closes the reservation.
        shares = await self.journal.commit_async(seed_id, taken, response, cost_usd=cost, request_id=request_id)
        await self.budget.settle(reserve, cost, self.stage)
        await self._to_cache(messages, taken, completions, shares, response.model)
        stats.prompt_tokens += response.prompt_tokens
        stats.completion_tokens += response.completion_tokens
        stats.reasoning_tokens += response.reasoning_tokens
        stats.cached_prompt_tokens += response.cached_tokens
        stats.samples_new += len(taken)
        self.progress.advance(len(taken), response.prompt_tokens + response.completion_tokens, cost)
        for (_, index), comp, (p, c) in zip(taken, completions, shares, strict=True):
            outcome.samples.append(Sample(index, comp, p, c, response.model))
        return rest


class _TokensOnly(Progress):
    """Progress for a step that counts its own samples (self-instruct counts accepted tasks)."""

    def __init__(self, target: Progress):
        super().__init__()
        self.target = target

    def advance(self, samples: int, tokens: int = 0, usd: float = 0.0) -> None:
        self.target.advance(0, tokens, usd)


CACHED_BACKENDS = ("openai", "vllm")  # paid or remote; local weights can change under the same path
OPENAI_URL = "https://api.openai.com/v1"


def cache_endpoint(config: TeacherConfig) -> list[str]:
    """The endpoint part of a cache key: the server (replicas sorted; vLLM and OpenAI-compatible alike)."""
    return sorted(u.rstrip("/") for u in config.base_urls) or [OPENAI_URL]


async def open_response_cache(ctx: RankContext) -> ResponseCache | None:
    """The rank's response cache (one per rank, shared by its samplers), or None when it is off."""
    async def opener() -> tuple[ResponseCache | None, Callable[[], Any] | None]:
        path = ctx.control.response_cache()
        if path is None:
            return None, None
        try:
            cache = await asyncio.to_thread(ResponseCache, path)
        except (sqlite3.Error, OSError) as exc:
            ctx.log(f"response cache {path} not used: {exc}")
            return None, None
        return cache, cache.aclose

    return await ctx.resource("response_cache", opener)


async def open_sampler(ctx: RankContext, name: str, config: TeacherConfig, *, stage: str,
                       identity: dict[str, Any] | None = None, prices: Prices | None = None,
                       journal_only: bool = False, counts_samples: bool = True) -> Sampler:
    """The rank's sampler `name` for a teacher config: opened once, stopped with the run, closed with the rank."""
    from distilforge.teachers import make_teacher, teacher_identity

    async def opener() -> tuple[Sampler, Callable[[], Any]]:
        cache = await open_response_cache(ctx) if config.cache and config.backend in CACHED_BACKENDS else None
        teacher = make_teacher(config, share=1.0 / ctx.world_size)
        await teacher.start()
        sampler = Sampler(teacher, ctx.journal, ctx.budget, stage=stage,
                          identity=identity or teacher_identity(config),
                          completion_budget=config.completion_budget(), prices=prices, supports_n=config.supports_n,
                          retry=config.retry, progress=ctx.progress if counts_samples else _TokensOnly(ctx.progress),
                          on_budget=ctx.stop, journal_only=journal_only, cache=cache,
                          endpoint=cache_endpoint(config))
        if ctx.stopped:
            sampler.stop(ctx.stopped)
        ctx.on_stop(sampler.stop)
        ctx.samplers.append(sampler)
        return sampler, teacher.aclose

    return await ctx.resource(f"sampler:{name}", opener)


async def sample_many(sampler: Sampler, asks: list[tuple[str, list[dict[str, str]]]]) -> list[Outcome]:
    """One sample for each (id, messages), concurrently (the sampler bounds what is on the wire)."""
    return list(await asyncio.gather(*(sampler.sample(ask_id, messages, range(1)) for ask_id, messages in asks)))
