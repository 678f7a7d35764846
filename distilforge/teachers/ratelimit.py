"""Client-side rate limiting for one endpoint: requests/min and tokens/min token buckets.

Each bucket holds at most one second of its limit, so a limiter never bursts past what the server's
own per-minute window allows. Tokens are reserved before sending (prompt estimate + the completion
budget) and reconciled with the usage the server reports. `x-ratelimit-limit-*` headers may only lower
the configured rates. After a 429 the whole endpoint cools down (bounded by Retry-After), so one
rejection does not become a storm.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

# Pace at 97% of the limit: the server's window and ours never line up exactly (network jitter moves
# arrivals by milliseconds), and a client at exactly 100% turns every jitter into a 429.
HEADROOM = 0.97

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """OpenAI's reset durations: '1s', '6m0s', '20ms', '1h2m3.5s'."""
    if not value:
        return None
    parts = _DURATION_RE.findall(value)
    if not parts:
        try:
            return float(value)
        except ValueError:
            return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


class TokenBucket:
    def __init__(self, per_minute: float, *, min_capacity: float = 1.0):
        self.min_capacity = min_capacity
        self.set_rate(per_minute)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute * HEADROOM / 60.0
        self.capacity = max(self.min_capacity, self.rate)  # one second of the limit
        if hasattr(self, "level"):
            self.level = min(self.level, self.capacity)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float, now: float) -> float:
        self.refill(now)
        need = min(amount, self.capacity)  # an oversized request goes once the bucket is full
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount  # may go negative for an oversized request: later ones wait it out

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def drain(self) -> None:
        self.level = min(self.level, 0.0)


class RateLimiter:
    """`share`: the part of the endpoint's limits this process may use (1/N for each of N ranks)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, share: float = 1.0):
        self.share = share
        self.requests = TokenBucket(rpm * share) if rpm else None
        self.tokens = TokenBucket(tpm * share, min_capacity=1.0) if tpm else None
        self.cooldown_until = 0.0
        self.waited_seconds = 0.0
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    async def acquire(self, tokens: int) -> None:
        if not self.active and time.monotonic() >= self.cooldown_until:
            return  # no limit known and no cool-down: the fast path takes no lock
        # One waiter at a time: requests leave in arrival order and never race for the same refill.
        async with self._lock:
            while True:
                now = time.monotonic()
                wait = self.cooldown_until - now
                if self.requests is not None:
                    wait = max(wait, self.requests.wait_time(1, now))
                if self.tokens is not None:
                    wait = max(wait, self.tokens.wait_time(tokens, now))
                if wait <= 0:
                    if self.requests is not None:
                        self.requests.take(1)
                    if self.tokens is not None:
                        self.tokens.take(tokens)
                    return
                self.waited_seconds += wait
                await asyncio.sleep(wait)

    def reconcile(self, reserved_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.give_back(reserved_tokens - actual_tokens)

    def refund(self, reserved_tokens: int) -> None:
        """A request the server refused (429/5xx) consumed no tokens."""
        if self.tokens is not None:
            self.tokens.give_back(reserved_tokens)

    def on_rate_limited(self, retry_after: float | None) -> None:
        """Pause the whole endpoint: until Retry-After if given, else one second."""
        pause = min(retry_after if retry_after is not None else 1.0, 60.0)
        self.cooldown_until = max(self.cooldown_until, time.monotonic() + pause)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.drain()

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Lower the rates to what the server says its limit is; never raise them.

        With no configured rate the limit is unbounded, so a server's first header sets it.
        """
        for name in ("requests", "tokens"):
            limit = headers.get(f"x-ratelimit-limit-{name}")
            try:
                value = float(limit) * self.share if limit else None
            except ValueError:
                value = None
            bucket = getattr(self, name)
            if value is not None and value > 0:
                if bucket is None:
                    setattr(self, name, TokenBucket(value))
                    bucket = getattr(self, name)
                elif value < bucket.per_minute:
                    bucket.set_rate(value)
            if bucket is None:
                continue
            remaining = headers.get(f"x-ratelimit-remaining-{name}")
            if remaining is not None and remaining.strip() == "0":
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{name}"))
                if reset:
                    self.cooldown_until = max(self.cooldown_until, time.monotonic() + min(reset, 60.0))
