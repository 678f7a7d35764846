"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, llama.cpp server, ...).

One retry layer: the SDK's own retries are off (`max_retries=0`) and tenacity retries here, so every
attempt, 429 and 5xx is counted once and Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from distilforge.schemas.config import TeacherConfig
from distilforge.teachers.base import Completion, Teacher, TeacherError, TeacherResponse, TeacherStats

RETRY_AFTER_CAP = 120.0  # never sleep longer than this on a server's say-so


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


class OpenAITeacher(Teacher):
    def __init__(self, config: TeacherConfig):
        self.config = config
        self.model = config.model
        self.max_concurrency = config.max_concurrency
        self.stats = TeacherStats()
        self._client: openai.AsyncOpenAI | None = None
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

    async def start(self) -> None:
        if self._client is not None:
            return
        try:
            http_client = openai.DefaultAioHttpClient(timeout=self.config.timeout)
        except RuntimeError:  # aiohttp extra missing: the default transport still works
            http_client = None
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key(),
            base_url=self.config.base_url,
            max_retries=0,
            timeout=self.config.timeout,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _request_body(self, messages: list[dict[str, str]], n: int) -> dict[str, Any]:
        p = self.config.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
        }
        if n > 1:
            body["n"] = n
        for key in ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
            value = getattr(p, key)
            if value is not None:
                body[key] = value
        if p.extra_body:
            body["extra_body"] = p.extra_body
        return body

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP) + random.uniform(0, 0.05)
        # Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s ... capped at 30 s.
        return random.uniform(0, min(30.0, 0.25 * 2 ** (state.attempt_number - 1)))

    async def _attempt(self, messages: list[dict[str, str]], n: int) -> TeacherResponse:
        assert self._client is not None
        try:
            async with self._slots:
                self.stats.attempts += 1
                resp = await self._client.chat.completions.create(**self._request_body(messages, n))
            completions = [Completion(c.message.content or "", c.finish_reason) for c in resp.choices]
            if not completions:
                raise ValueError("response has no choices")
            usage = resp.usage
            return TeacherResponse(
                completions=completions,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                model=resp.model or self.model,
            )
        except Exception as exc:
            kind, retryable, retry_after = classify(exc)
            self.stats.count_error(kind)
            if kind == "429":
                self.stats.rate_limited += 1
            elif retryable:
                self.stats.server_errors += 1
            message = f"{kind}: {str(exc)[:300]}"
            if retryable:
                raise _Retryable(message, retry_after) from exc
            raise TeacherError(message) from exc

    async def complete(self, messages: list[dict[str, str]], n: int = 1) -> TeacherResponse:
        if self._client is None:
            await self.start()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._wait,
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
