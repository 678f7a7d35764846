"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, llama.cpp server, ...).

One attempt per call: the `Sampler` retries, because after every attempt the budget must know
whether the server may have billed it. Chat requests go straight through aiohttp (one pooled
session per endpoint, sized to the concurrency): the request is plain JSON we build ourselves, and
the SDK's per-request machinery (typed options, URL building, response models) cost more CPU than the
rest of the pipeline. The SDK is kept for the Batch API's files and batches (`batch_client`).

Each failure is classified by what the transport saw: refused before sending (never billed), refused
by the server with a readable error (429, 5xx: not billed), or sent with an unknown outcome (timeout,
dropped connection, an unreadable 200 body: maybe billed).

Structured output is negotiated per endpoint, not assumed: a request asking for a JSON schema tries
`json_schema`, then `json_object` with the schema inline (llama.cpp, some vLLM versions), then plain
text (the caller repairs and validates it). One request finds the form; the others wait for it; the
endpoint remembers it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from distilforge.core import fastjson
from distilforge.core.redact import redact, register_secret, strip_userinfo
from distilforge.core.tokens import estimate_prompt_tokens
from distilforge.core.urls import authorization
from distilforge.schemas import TeacherConfig
from distilforge.schemas.hidden_trace import hidden_trace_model
from distilforge.schemas.records import TeacherResponse
from distilforge.teachers.base import AttemptFailed, Teacher, TeacherError
from distilforge.teachers.chat_response import StreamAssembler, response_from_body
from distilforge.teachers.ratelimit import RateLimiter

OPENAI_URL = "https://api.openai.com/v1"
UNHEALTHY_SECONDS = 5.0  # a replica that just failed sits out this long
STRUCTURED_FORMS = ("json_schema", "json_object", "text")
# Words in an error body that say the server refused the structured-output request itself: such an
# error does not change on retry, so the endpoint falls back to the next form at once.
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar", "structured")


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


class HttpError(Exception):
    """A non-200 answer: its status, headers and body (as the server sent it)."""

    def __init__(self, status: int, headers: Any, body: bytes):
        self.status, self.headers, self.body = status, headers, body
        try:
            self.data: Any = json.loads(body) if body else None
        except ValueError:
            self.data = None
        error = self.data.get("error") if isinstance(self.data, dict) else None
        message = error.get("message") if isinstance(error, dict) else (error if isinstance(error, str) else None)
        self.message = str(message or body[:200].decode("utf-8", "replace") or f"HTTP {status}")
        super().__init__(f"HTTP {status}: {self.message}")

    @property
    def readable(self) -> bool:
        return isinstance(self.data, dict)


def classify(exc: BaseException) -> AttemptFailed:
    """What a failed attempt means for retries and for the bill."""
    message = redact(str(exc))[:300]
    if isinstance(exc, HttpError):
        status = exc.status
        if 300 <= status < 400:
            # Redirects are never followed: a 3xx would send the prompt (and the key) to a host nobody checked.
            where = strip_userinfo(str(exc.headers.get("location") or "")) if exc.headers is not None else ""
            return AttemptFailed("redirect", f"HTTP {status}: the teacher answered with a redirect"
                                             f"{' to ' + redact(where)[:200] if where else ''}; redirects are not "
                                             "followed (give the final URL as base_url)", retryable=False)
        if status == 429:
            return AttemptFailed("429", message, retryable=True, retry_after=retry_after_seconds(exc.headers))
        # Some servers (llama.cpp's) answer a request they cannot validate with a 500 that says so:
        # it will not change on retry.
        validation = status >= 500 and "validation error" in exc.message.lower()
        retryable = (status >= 500 and not validation) or status in (408, 409)
        # A 5xx with a readable error body was refused, not billed; without one (a proxy's HTML page,
        # a cut body) the upstream may have done the work.
        maybe_billed = status >= 500 and not exc.readable
        return AttemptFailed(str(status), message, retryable=retryable, maybe_billed=maybe_billed,
                             retry_after=retry_after_seconds(exc.headers))
    if isinstance(exc, (aiohttp.ClientConnectorError, getattr(aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError))):
        # refused, unreachable, DNS, or no connection within the timeout: nothing was sent
        return AttemptFailed("connection", f"connection refused or unreachable ({message})", retryable=True)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return AttemptFailed("timeout", message or "no answer within teacher.timeout", retryable=True,
                             maybe_billed=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return AttemptFailed("malformed", f"the answer's body was cut ({message})", retryable=True, maybe_billed=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionError)):
        return AttemptFailed("dropped", f"the connection dropped after the request was sent ({message})",
                             retryable=True, maybe_billed=True)
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return AttemptFailed("malformed", message, retryable=True, maybe_billed=True)
    return AttemptFailed(type(exc).__name__, message, retryable=False)


@dataclass
class Endpoint:
    """One server (replica) of the teacher: its session, rate limiter, load and structured-output form."""

    url: str
    session: aiohttp.ClientSession
    limiter: RateLimiter
    in_flight: int = 0
    sent: int = 0
    unhealthy_until: float = 0.0
    structured: str = "json_schema"  # the form this endpoint is asked in (see STRUCTURED_FORMS)
    settled: bool = False  # a structured request has succeeded in that form
    probe: asyncio.Event | None = None  # set while one request finds the form; the others wait for it

    @property
    def chat_url(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


class OpenAITeacher(Teacher):
    """Chat completions over HTTP. Also the `vllm` backend: the same client plus vLLM's checks."""

    def __init__(self, config: TeacherConfig, share: float = 1.0):
        self.config = config
        self.share = share  # this process's part of each endpoint's rate limits (1/N of N ranks)
        self.model = config.model
        self.max_concurrency = config.max_concurrency
        self.endpoints: list[Endpoint] = []
        self._notes: list[str] = []
        self._key = self._api_key()  # fails before the run writes anything when the variable is not set
        self._openai_host = all("api.openai.com" in u for u in config.base_urls) if config.base_urls else True
        fmt = config.params.response_format
        self._negotiates = fmt is not None and fmt.get("type") == "json_schema"
        self._batch_client: Any = None
        self._hidden = config.backend == "openai" and hidden_trace_model(config.model)
        self._timeout = self._request_timeout()

    def _api_key(self) -> str:
        name = self.config.api_key_env
        if name is None:
            return "EMPTY"  # keyless servers (a local vLLM) still need a non-empty header
        key = os.environ.get(name)
        if not key:
            raise TeacherError(f"teacher.api_key_env: environment variable {name} is not set")
        register_secret(key)
        return key

    def _authorization(self, url: str) -> str:
        return authorization(url, self._key, keyless=self.config.api_key_env is None)

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Authorization": self._authorization(url), "Content-Type": "application/json"}
        for variable, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(variable) and self._openai_host:
                headers[header] = os.environ[variable]
        return headers

    async def start(self) -> None:
        if self.endpoints:
            return
        urls = list(self.config.base_urls) or [OPENAI_URL]
        if self.config.backend == "vllm":
            await check_vllm_servers(urls, self.model, self._key, self.config.api_key_env is None)
        for url in urls:
            # One pooled session per endpoint, sized to the concurrency, so connections are reused.
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, ttl_dns_cache=300)
            # Credentials in the URL travel in the header above; aiohttp refuses them beside one.
            session = aiohttp.ClientSession(connector=connector, headers=self._headers(url), timeout=self._timeout)
            limiter = RateLimiter(self.config.rpm, self.config.tpm, share=self.share)
            self.endpoints.append(Endpoint(strip_userinfo(url), session, limiter))

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.session.close()
        self.endpoints = []
        if self._batch_client is not None:
            await self._batch_client.close()
            self._batch_client = None

    def batch_client(self) -> Any:
        """The OpenAI SDK client, for the Batch API's files and batches (not on the request path)."""
        if self._batch_client is None:
            import openai

            # The SDK's httpx client follows redirects by default; a 3xx is an error here, as on the chat path.
            url = (self.config.base_urls or [OPENAI_URL])[0]
            self._batch_client = openai.AsyncOpenAI(api_key=self._key, base_url=strip_userinfo(url),
                                                    default_headers={"Authorization": self._authorization(url)},
                                                    max_retries=2, timeout=self.config.timeout,
                                                    http_client=openai.DefaultAsyncHttpxClient(
                                                        follow_redirects=False, timeout=self.config.timeout))
        return self._batch_client

    def _pick(self) -> Endpoint:
        """The least-loaded healthy replica (a replica that just failed sits out a few seconds)."""
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.unhealthy_until <= now] or self.endpoints
        return min(healthy, key=lambda e: (e.in_flight, e.sent))

    def _request_timeout(self) -> aiohttp.ClientTimeout:
        """Long generations never time out for being long. Streamed: `timeout` is the longest silence
        between chunks (a hidden trace streams nothing while it thinks, so it gets the floor-rate time).
        Not streamed: the whole answer gets max(timeout, max tokens / min_tokens_per_second)."""
        c = self.config
        if c.stream:
            silence = c.request_timeout() if self._hidden else c.timeout
            return aiohttp.ClientTimeout(total=None, sock_connect=c.timeout, sock_read=silence)
        return aiohttp.ClientTimeout(total=c.request_timeout())

    def request_body(self, messages: list[dict[str, str]], n: int, structured: str = "json_schema") -> dict[str, Any]:
        p = self.config.params
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": p.temperature}
        if self._hidden:
            # OpenAI's reasoning models: max_completion_tokens (the trace included), no sampling parameters
            # unless given and accepted (checked with the config), reasoning_effort passed through.
            if "temperature" not in p.model_fields_set:
                del body["temperature"]
            body["max_completion_tokens"] = self.config.completion_budget()
        elif p.max_completion_tokens is not None:
            body["max_completion_tokens"] = p.max_completion_tokens
            if not self._openai_host:
                # Servers other than OpenAI's may ignore max_completion_tokens (llama.cpp does): the
                # budget's worst case assumes the cap holds, so it goes as max_tokens too.
                body["max_tokens"] = p.max_completion_tokens
        else:
            body["max_tokens"] = p.max_tokens
        if n > 1:
            body["n"] = n
        for key in ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
            value = getattr(p, key)
            if value is not None:
                body[key] = value
        fmt = p.response_format
        if fmt is not None:
            if fmt.get("type") != "json_schema" or structured == "json_schema":
                body["response_format"] = fmt
            elif structured == "json_object":
                body["response_format"] = {"type": "json_object", "schema": fmt["json_schema"]["schema"]}
        if p.reasoning_effort is not None:
            body["reasoning_effort"] = p.reasoning_effort
        if self.config.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # the bill comes in the last chunk
        # A raw JSON body carries vendor fields (vLLM's structured_outputs, top_k, ...) inline.
        body.update(p.extra_body)
        return body

    def _format_refused(self, exc: BaseException, endpoint: Endpoint) -> bool:
        """The server refused our structured-output form (a fixed answer, not a passing fault)."""
        if not isinstance(exc, HttpError) or exc.status not in (400, 422, 500, 501):
            return False
        if not self._negotiates or endpoint.structured == "text":
            return False
        text = f"{exc.message} {exc.body[:2000].decode('utf-8', 'replace')}".lower()
        return any(word in text for word in _FORMAT_WORDS)

    async def attempt(self, messages: list[dict[str, str]], n: int = 1) -> TeacherResponse:
        if not self.endpoints:
            await self.start()
        endpoint = self._pick()
        if not self._negotiates or endpoint.settled:
            return await self._attempt(endpoint, messages, n)
        # Until an endpoint has answered a structured request, one request finds the form it accepts
        # and the others wait, so a server that refuses json_schema is told so once, not once per row.
        while not endpoint.settled and endpoint.probe is not None:
            await endpoint.probe.wait()
        if endpoint.settled:
            return await self._attempt(endpoint, messages, n)
        endpoint.probe = asyncio.Event()
        try:
            response = await self._attempt(endpoint, messages, n)
            endpoint.settled = True
            return response
        finally:
            probe, endpoint.probe = endpoint.probe, None
            probe.set()

    async def _post(self, endpoint: Endpoint, body: dict[str, Any]) -> TeacherResponse:
        async with endpoint.session.post(endpoint.chat_url, data=fastjson.dumps(body),
                                       allow_redirects=False) as resp:
            if resp.status != 200:
                raise HttpError(resp.status, resp.headers, await resp.read())
            endpoint.limiter.observe_headers(resp.headers)
            if "text/event-stream" in resp.headers.get("Content-Type", ""):
                data = await self._read_stream(resp)
            else:  # not streamed, or a server that answers `stream: true` with one plain body
                data = fastjson.loads(await resp.read())
        return response_from_body(data, self.model, self.config.opens_thinking)

    async def _read_stream(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        """The streamed answer: each chunk must come within `timeout` of the last (the session's
        sock_read); a stream that ends before its last chunk is cut (maybe billed, like a dropped one)."""
        stream = StreamAssembler(self.model)
        async for line in resp.content:
            stream.feed_line(line)
        # Complete when the server said so ([DONE]; llama.cpp's Python server may then leave finish_reason
        # out) or when every choice finished; otherwise the stream was cut.
        finished = stream.choices and all(c["finish_reason"] for c in stream.choices.values())
        if not finished and not (stream.done and stream.choices):
            raise aiohttp.ClientPayloadError("the stream ended before the answer did")
        return stream.body()

    async def _attempt(self, endpoint: Endpoint, messages: list[dict[str, str]], n: int) -> TeacherResponse:
        limiter = endpoint.limiter
        reserved = estimate_prompt_tokens(messages) + self.config.completion_budget() * n
        await limiter.acquire(reserved)
        endpoint.in_flight += 1
        endpoint.sent += 1
        try:
            while True:
                try:
                    response = await self._post(endpoint, self.request_body(messages, n, endpoint.structured))
                    break
                except Exception as exc:
                    if self._format_refused(exc, endpoint):
                        # Not billed (the server refused it): fall back to the next form and ask again.
                        following = STRUCTURED_FORMS[STRUCTURED_FORMS.index(endpoint.structured) + 1]
                        self._notes.append(f"{strip_userinfo(endpoint.url)}: {endpoint.structured} refused "
                                           f"({getattr(exc, 'status', '?')}); using {following}")
                        endpoint.structured = following
                        continue
                    failure = classify(exc)
                    if failure.kind in ("401", "403"):  # name the variable that holds the refused key
                        failure = AttemptFailed(failure.kind, f"{str(failure).split(': ', 1)[-1]} (the key in "
                                                f"{self.config.api_key_env or 'no api_key_env'} was refused)",
                                                retryable=False)
                    limiter.refund(reserved)
                    if failure.kind == "429":
                        limiter.observe_headers(exc.headers)  # type: ignore[attr-defined]
                        limiter.on_rate_limited(failure.retry_after)
                    elif failure.retryable and len(self.endpoints) > 1 and (
                            failure.kind in ("connection", "dropped", "timeout") or failure.kind.startswith("5")):
                        endpoint.unhealthy_until = time.monotonic() + UNHEALTHY_SECONDS
                    raise failure from exc
        finally:
            endpoint.in_flight -= 1
        used = response.prompt_tokens + response.completion_tokens if response.usage_reported else reserved
        limiter.reconcile(reserved, used)
        return response

    def notes(self) -> list[str]:
        """What this teacher learnt about its servers (structured-output fallbacks), for run.json."""
        return list(self._notes)


def _probe_session() -> aiohttp.ClientSession:
    """The start-up checks' client: aiohttp like the requests (no second HTTP stack to import), 10 s per
    check, proxies from the environment as before."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0), trust_env=True)


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A GET that never follows a redirect: its status and body. Credentials in the URL are left out
    (aiohttp refuses them beside an Authorization header; `authorization` puts them in the header)."""
    async with http.get(strip_userinfo(url), headers=headers, allow_redirects=False) as answer:
        return answer.status, await answer.read()


async def check_vllm_servers(urls: list[str], model: str, api_key: str, keyless: bool = False) -> None:
    """vLLM serves /health at the server root and /v1/models: fail early, and clearly, if either is off.

    Errors name the configured URL (without credentials) and the status, never the server's answer.
    """
    from distilforge.core.urls import server_root

    async with _probe_session() as http:
        for url in urls:
            shown = strip_userinfo(url)
            try:
                headers = {"Authorization": authorization(url, api_key, keyless)}
                health, _ = await _get(http, f"{server_root(url)}/health", headers)
                status, body = await _get(http, f"{url.rstrip('/')}/models", headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TeacherError(f"teacher.base_url {shown}: vLLM server unreachable ({type(exc).__name__})") from None
            if health != 200:
                raise TeacherError(f"teacher.base_url {shown}: /health answered {health}")
            if status != 200:
                raise TeacherError(f"teacher.base_url {shown}: /v1/models answered {status}")
            try:
                served = [m.get("id") for m in json.loads(body).get("data", [])]
            except (ValueError, AttributeError):
                raise TeacherError(f"teacher.base_url {shown}: /v1/models is not an OpenAI-compatible model list") from None
            if model not in served:
                raise TeacherError(f"teacher.model {model!r} is not served by {shown}")


async def probe_endpoints(urls: list[str], api_key: str, key_env: str | None, where: str) -> None:
    """One free GET /models per server before the run: a refused key or a server that is down stops the
    run before anything is sent or paid. A server without /models (404, 405) passes: its first chat
    requests are the probe (a run whose first requests all get 401 stops at once, see the Sampler).

    Errors name the variable or the URL (without credentials), never the key or the server's answer.
    """
    async with _probe_session() as http:
        for url in urls:
            shown = strip_userinfo(url)
            try:
                status, _ = await _get(http, f"{url.rstrip('/')}/models",
                                       {"Authorization": authorization(url, api_key, key_env is None)})
            except aiohttp.ClientConnectorError:
                raise TeacherError(f"{where}.base_url {shown}: connection refused; start the server or fix the "
                                   "URL") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TeacherError(f"{where}.base_url {shown}: unreachable ({type(exc).__name__})") from None
            if status in (401, 403):
                variable = f"the key in {key_env}" if key_env else (
                    "the user and password in the URL" if shown != url else f"no key ({where}.api_key_env is not set)")
                raise TeacherError(f"{where}.api_key_env: {shown} refused {variable} (HTTP {status}); "
                                   f"set {key_env or f'{where}.api_key_env'} to a valid key") from None
