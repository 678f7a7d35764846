"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, llama.cpp server, ...).

One retry layer: the SDK's own retries are off (`max_retries=0`) and tenacity retries here, so every
attempt, 429 and 5xx is counted once and Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from distilforge.core.config import TeacherConfig
from distilforge.core.tokens import estimate_prompt_tokens
from distilforge.teachers.base import Completion, Teacher, TeacherError, TeacherResponse, TeacherStats
from distilforge.teachers.ratelimit import RateLimiter

RETRY_AFTER_CAP = 120.0  # never sleep longer than this on a server's say-so
UNHEALTHY_SECONDS = 5.0  # a replica that just failed sits out this long
HEADER_SAMPLE = 20  # read rate-limit headers from the 1st, 21st, 41st ... response of an endpoint


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = _as_float(headers.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _as_float(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        import datetime as dt

        when = parsedate_to_datetime(value)
        return max(0.0, (when - dt.datetime.now(when.tzinfo)).total_seconds())
    except (TypeError, ValueError):
        return None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def classify(exc: BaseException) -> tuple[str, bool, float | None]:
    """(kind, retryable, retry_after) for an SDK exception."""
    if isinstance(exc, openai.RateLimitError):
        return "429", True, retry_after_seconds(exc.response.headers)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status >= 500 or status in (408, 409)
        return str(status), retryable, retry_after_seconds(exc.response.headers)
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, ValueError, KeyError)):
        return "malformed", True, None
    return type(exc).__name__, False, None


@dataclass
class Endpoint:
    """One server (replica) of the teacher: its client, its rate limiter and its load."""

    url: str | None
    client: openai.AsyncOpenAI
    limiter: RateLimiter
    in_flight: int = 0
    sent: int = 0
    unhealthy_until: float = 0.0


class OpenAITeacher(Teacher):
    """Chat completions over HTTP. Also the `vllm` backend: the same client plus vLLM's checks."""

    def __init__(self, config: TeacherConfig):
        self.config = config
        self.model = config.model
        self.max_concurrency = config.max_concurrency
        self.stats = TeacherStats()
        self.endpoints: list[Endpoint] = []
        self._api_key()  # fail before the run writes anything when the key variable is not set
        # Bounds requests on the wire, not callers: a request sleeping in backoff holds no slot.
        self._slots = asyncio.Semaphore(config.max_concurrency)

    def _api_key(self) -> str:
        name = self.config.api_key_env
        if name is None:
            return "EMPTY"  # keyless servers (a local vLLM) still need a non-empty header
        key = os.environ.get(name)
        if not key:
            raise TeacherError(f"teacher.api_key_env: environment variable {name} is not set")
        return key

    def _client(self, base_url: str | None) -> openai.AsyncOpenAI:
        try:
            # aiohttp is the SDK's fastest transport; its pool is sized to our concurrency so
            # connections are reused rather than churned.
            http_client = openai.DefaultAioHttpClient(
                timeout=self.config.timeout, limits=httpx2_limits(self.config.max_concurrency)
            )
        except RuntimeError:  # the aiohttp extra is missing: the default transport still works
            http_client = None
        return openai.AsyncOpenAI(
            api_key=self._api_key(),
            base_url=base_url,
            max_retries=0,
            timeout=self.config.timeout,
            http_client=http_client,
        )

    async def start(self) -> None:
        if self.endpoints:
            return
        urls: list[str | None] = list(self.config.base_urls) or [None]
        for url in urls:
            self.endpoints.append(Endpoint(url, self._client(url), RateLimiter(self.config.rpm, self.config.tpm)))
        if self.config.backend == "vllm":
            await check_vllm_servers([u for u in urls if u], self.model, self._api_key())

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()
        self.endpoints = []

    def _pick(self) -> Endpoint:
        """The least-loaded healthy replica (a replica that just failed sits out a few seconds)."""
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.unhealthy_until <= now] or self.endpoints
        return min(healthy, key=lambda e: (e.in_flight, e.sent))

    def request_body(self, messages: list[dict[str, str]], n: int) -> dict[str, Any]:
        p = self.config.params
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": p.temperature}
        if p.max_completion_tokens is not None:
            body["max_completion_tokens"] = p.max_completion_tokens
        else:
            body["max_tokens"] = p.max_tokens
        if n > 1:
            body["n"] = n
        for key in ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "response_format"):
            value = getattr(p, key)
            if value is not None:
                body[key] = value
        # A raw JSON body carries vendor fields (vLLM's structured_outputs, ...) inline.
        body.update(p.extra_body)
        return body

    @staticmethod
    def _delay(exc: BaseException | None, attempt_number: int) -> float:
        """Seconds before retry `attempt_number` + 1: Retry-After when the server gave one."""
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP) + random.uniform(0, 0.05)
        # Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s ... capped at 30 s.
        return random.uniform(0, min(30.0, 0.25 * 2 ** (attempt_number - 1)))

    async def _attempt(self, messages: list[dict[str, str]], n: int) -> TeacherResponse:
        async with self._slots:
            endpoint = self._pick()
            limiter = endpoint.limiter
            reserved = estimate_prompt_tokens(messages) + self.config.completion_budget() * n
            await limiter.acquire(reserved)
            endpoint.in_flight += 1
            endpoint.sent += 1
            self.stats.attempts += 1
            try:
                body = self.request_body(messages, n)
                # The body is plain JSON we built ourselves, so it goes through the client's documented
                # `post` (same transport, auth and errors as `create`) without `create`'s per-call
                # walk of the TypedDict params, which costs more CPU than the rest of our pipeline.
                if endpoint.sent % HEADER_SAMPLE == 1:
                    # Every HEADER_SAMPLE-th response is read raw for its x-ratelimit-* headers.
                    raw = await endpoint.client.post("/chat/completions", body=body,
                                                     cast_to=openai.types.chat.ChatCompletion,
                                                     options={"headers": {"X-Stainless-Raw-Response": "true"}})
                    limiter.observe_headers(raw.headers)
                    resp = raw.parse()
                else:
                    resp = await endpoint.client.post("/chat/completions", body=body,
                                                      cast_to=openai.types.chat.ChatCompletion)
                completions = [Completion(c.message.content or "", c.finish_reason) for c in resp.choices]
                if not completions:
                    raise ValueError("response has no choices")
            except Exception as exc:
                kind, retryable, retry_after = classify(exc)
                self.stats.count_error(kind)
                limiter.refund(reserved)
                if kind == "429":
                    self.stats.rate_limited += 1
                    limiter.observe_headers(exc.response.headers)  # type: ignore[attr-defined]
                    limiter.on_rate_limited(retry_after)
                elif retryable:
                    self.stats.server_errors += 1
                    if len(self.endpoints) > 1 and (kind in ("connection", "timeout") or kind.startswith("5")):
                        endpoint.unhealthy_until = time.monotonic() + UNHEALTHY_SECONDS
                message = f"{kind}: {str(exc)[:300]}"
                if retryable:
                    raise _Retryable(message, retry_after) from exc
                raise TeacherError(message) from exc
            finally:
                endpoint.in_flight -= 1
        usage = resp.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        limiter.reconcile(reserved, prompt_tokens + completion_tokens if usage else reserved)
        return TeacherResponse(completions, prompt_tokens, completion_tokens, resp.model or self.model)

    async def complete(self, messages: list[dict[str, str]], n: int = 1) -> TeacherResponse:
        if not self.endpoints:
            await self.start()
        # Most requests succeed first time: they skip the retry machinery, whose set-up costs more
        # CPU per request than the rest of our pipeline.
        try:
            return await self._attempt(messages, n)
        except _Retryable as exc:
            first = exc
        if self.config.max_attempts == 1:
            raise TeacherError(f"gave up after 1 attempt: {first}", retryable=True) from first
        self.stats.retries += 1
        await asyncio.sleep(self._delay(first, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts - 1),
            wait=lambda state: self._delay(state.outcome.exception() if state.outcome else None,
                                           state.attempt_number + 1),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            reraise=True,
            before_sleep=lambda _state: setattr(self.stats, "retries", self.stats.retries + 1),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(messages, n)
        except _Retryable as exc:
            raise TeacherError(f"gave up after {self.config.max_attempts} attempts: {exc}", retryable=True) from exc
        raise AssertionError("unreachable")


def httpx2_limits(concurrency: int) -> Any:
    import httpx2

    return httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


async def check_vllm_servers(urls: list[str], model: str, api_key: str) -> None:
    """vLLM serves /health at the server root and /v1/models: fail early, and clearly, if either is off."""
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as http:
        for url in urls:
            root = url.rstrip("/")
            root = root[: -len("/v1")] if root.endswith("/v1") else root
            try:
                health = await http.get(f"{root}/health")
                models = await http.get(f"{url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"})
            except httpx.HTTPError as exc:
                raise TeacherError(f"teacher.base_url {url}: vLLM server unreachable ({type(exc).__name__}: {exc})") from None
            if health.status_code != 200:
                raise TeacherError(f"teacher.base_url {url}: /health answered {health.status_code}")
            if models.status_code != 200:
                raise TeacherError(f"teacher.base_url {url}: /v1/models answered {models.status_code}")
            served = [m.get("id") for m in models.json().get("data", [])]
            if model not in served:
                raise TeacherError(f"teacher.model {model!r} is not served by {url}; it serves {served}")
