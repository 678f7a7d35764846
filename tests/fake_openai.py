"""A realistic fake OpenAI-compatible server on loopback, for tests only.

Real HTTP (aiohttp.web on its own event loop in a background thread, so it can keep up with the
client): `/v1/chat/completions` and `/v1/models`, usage counts, `n`
choices, per-request latency, 429 with Retry-After and x-ratelimit-* headers, 5xx, 400, malformed
bodies, and `finish_reason: length`. A `script` maps a question to how the server behaves for it.

Like a real provider it *bills* every request it accepts for processing, whatever happens next, in a
server-side ledger (`bills`, `billed_tokens()`, `billed_usd()`, `billed_keys()`):

| kind | what the client sees | billed |
| --- | --- | --- |
| (none) | a 200 answer with `usage` | yes |
| `no_usage` | a 200 answer without `usage` | yes |
| `slow`, `hang` | the answer after `hang_seconds` more (past the client's timeout) | yes |
| `drop`, `drop_after` | the connection closed without an answer, after processing | yes |
| `malformed`, `cut` | a 200 whose JSON body is cut in the middle | yes |
| `429` (and a `storm`) | 429 with Retry-After and x-ratelimit-* headers | no |
| `500`, `502`, `503`, `5xx` | that status with a readable JSON error body (`5xx` is 500) | no |
| `400`, `401` | that status with a JSON error body | no |

Faults come from a question's `Behaviour` (`failures` in order, or `always`), or at random:
`fault_rates` ({kind: probability}) draws at most one fault per chat request from a
`random.Random(fault_seed)` owned by the server (scripted faults win); `storm = (start, duration)`
answers every chat request with 429 from `start` seconds after the first chat request for `duration`
seconds, Retry-After saying when it ends. `hang_seconds` is how much longer "slow" / "hang" take.
`faults` counts what was served; `in_flight_keys`, `last_kind`, `open_keys()` and `snapshot(action)`
give the server's view of what a client still waits on (e.g. at the instant it is killed).

Reasoning models: a Behaviour's `reasoning` (traces, cycled like `answers`) is answered in its `shape`:
`reasoning_content` (DeepSeek, vLLM/SGLang parsers), `reasoning` (OpenRouter, Ollama, llama.cpp),
`think` (`<think>...</think>` in the content), `think_no_open` (the template opened it: no `<think>`),
`hidden` (o-series: only `usage.completion_tokens_details.reasoning_tokens`). A word is a token; the
trace counts against max_(completion_)tokens first, so a small cap cuts inside the thinking
(`finish_reason: length`, no answer). `prompt_cache` bills the prompt's prefix shared with an earlier
request (in `cache_block`-word blocks) as `prompt_tokens_details.cached_tokens`. `stream: true` is
answered as server-sent events (usage last, with `stream_options.include_usage`) unless
`plain_streams` (one JSON body, as some servers do); `tokens_per_second` paces every answer, times
`time_scale` (0.01: a 400 s generation takes 4 s). A `stall` stops a stream half-way for
`hang_seconds` (the client abandons it; billed in full).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Every kind a Behaviour or `fault_rates` may name.
FAULT_KINDS = ("429", "500", "502", "503", "5xx", "400", "401", "malformed", "cut", "drop", "drop_after",
               "slow", "hang", "no_usage", "stall")
# Kinds the server processes (and bills) before misbehaving; the others are refused before processing.
BILLED_KINDS = frozenset({"ok", "no_usage", "slow", "hang", "drop", "drop_after", "malformed", "cut", "batch", "stall"})
# Shapes whose servers count reasoning tokens (a model served without a parser does not).
_REPORTS_REASONING = frozenset({"reasoning_content", "reasoning", "hidden"})
# Kinds after which the client has no answer it can use (it will retry, or give up).
_NO_ANSWER = frozenset(FAULT_KINDS) - {"no_usage"} | {"storm"}


@dataclass(frozen=True)
class Bill:
    """One line of the server's bill: a request it accepted for processing."""

    request: int  # the server's request number (1, 2, ... in arrival order)
    prompt_tokens: int
    completion_tokens: int
    n: int  # choices actually generated
    key: str  # the script key of the question ("" for the default behaviour)
    kind: str  # "ok", "batch", or the fault served after billing ("no_usage", "hang", "drop_after", "cut", ...)
    reasoning_tokens: int = 0  # part of completion_tokens
    cached_tokens: int = 0  # part of prompt_tokens

    def usd(self, input_per_million: float, output_per_million: float,
            cached_input_per_million: float | None = None) -> float:
        cached = self.cached_tokens if cached_input_per_million is not None else 0
        return ((self.prompt_tokens - cached) * input_per_million + cached * (cached_input_per_million or 0.0)
                + self.completion_tokens * output_per_million) / 1e6


@dataclass
class Behaviour:
    """How the server answers one question. `answers[i]` is choice i's text (cycled)."""

    answers: list[str] = field(default_factory=lambda: ["The answer is 0."])
    finish_reason: str = "stop"
    # Failures served before success, in order: any kind in FAULT_KINDS ("429", "500", "503", "malformed",
    # "400", "drop", "slow", "no_usage", "hang", "drop_after", "cut", ...).
    failures: list[str] = field(default_factory=list)
    always: str | None = None  # fail every time with this kind
    reasoning: list[str] = field(default_factory=list)  # traces, cycled like answers (empty: no thinking)
    shape: str = "reasoning_content"  # reasoning_content | reasoning | think | think_no_open | hidden


class ServerBucket:
    """The server's own limiter: a bucket holding one second of a per-minute limit."""

    def __init__(self, per_minute: float):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def take(self, amount: float) -> float:
        """0 when granted, else seconds until it would be."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(amount, self.capacity)
        if self.level >= need:
            self.level -= amount
            return 0.0
        return (need - self.level) / self.rate


@dataclass
class FakeOpenAI:
    script: dict[str, Behaviour] = field(default_factory=dict)
    default: Behaviour = field(default_factory=Behaviour)
    latency: tuple[float, float] = (0.0, 0.0)
    supports_n: bool = True
    retry_after: float = 0.2
    rpm_limit: float | None = None  # enforced server-side, like a real provider
    tpm_limit: float | None = None
    model_ids: list[str] = field(default_factory=lambda: ["fake-teacher"])
    rejected_429: int = 0
    log_requests: bool = True  # off for long benchmarks, where the log itself would grow
    # Batch API state: uploaded files, batches, and how long a batch takes to finish.
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_seconds: float = 0.3
    batch_expire: bool = False  # finish as "expired" with only the first half of the rows done
    require_key: str | None = None
    require_authorization: str | None = None  # the whole header, e.g. 'Basic ...' (require_key: a bearer)
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # question-key -> successful responses
    _seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    # -- realism: billing, hangs, random faults, 429 storms ------------------------------------
    hang_seconds: float = 1.5  # how much longer a "slow" / "hang" request takes (past the client's timeout)
    fault_rates: dict[str, float] = field(default_factory=dict)  # kind -> probability per chat request
    fault_seed: int = 0
    storm: tuple[float, float] | None = None  # (start after N s from the first chat request, duration s)
    bills: list[Bill] = field(default_factory=list)  # the server's ledger, in billing order
    faults: Counter[str] = field(default_factory=Counter)  # kind -> times served ("storm" for storm 429s)
    in_flight_keys: Counter[str] = field(default_factory=Counter)  # key -> requests being processed now
    last_kind: dict[str, str] = field(default_factory=dict)  # key -> kind of its latest chat request ("ok" ...)
    chat_requests: int = 0  # every chat request received (also when `log_requests` is off)
    # response_format types the server accepts; others get a 500 like llama.cpp's server gives for json_schema
    accepts_formats: tuple[str, ...] = ("json_schema", "json_object", "text")
    prompt_cache: bool = False  # bill a prefix shared with an earlier prompt as cached tokens
    cache_block: int = 4  # cached tokens come in blocks of this many words
    plain_streams: bool = False  # answer `stream: true` with one plain JSON body
    tokens_per_second: float | None = None  # generation pace (None: instant)
    time_scale: float = 1.0  # real seconds per simulated second of generation
    stream_chunk_words: int = 16
    stream_finish_reason: bool = True  # False: chunks never say finish_reason, only [DONE] ends (llama-cpp-python)
    _first_chat: float | None = None
    serves_models: bool = True  # False: /v1/models answers 404 (a server without a model list)
    _prompts: list[list[str]] = field(default_factory=list)

    def refuses(self, auth: str | None) -> bool:
        """A 401 for this Authorization header (a server with no key wanted takes any)."""
        wanted = self.require_authorization or (f"Bearer {self.require_key}" if self.require_key else None)
        return wanted is not None and auth != wanted

    def behaviour_for(self, prompt: str) -> tuple[str, Behaviour]:
        for key, behaviour in self.script.items():
            if key in prompt:
                return key, behaviour
        return "", self.default

    # -- the bill --------------------------------------------------------------------------------
    def _bill(self, request: int, prompt_tokens: int, completion_tokens: int, n: int, key: str, kind: str) -> None:
        with self.lock:
            self.bills.append(Bill(request, prompt_tokens, completion_tokens, n, key, kind))

    def ledger(self, since: int = 0) -> list[Bill]:
        """A copy of the bill from line `since` on (`len(fake.bills)` taken earlier marks a point in time)."""
        with self.lock:
            return list(self.bills[since:])

    def billed_details(self, since: int = 0) -> tuple[int, int]:
        """(reasoning, cached prompt) tokens billed."""
        bills = self.ledger(since)
        return sum(b.reasoning_tokens for b in bills), sum(b.cached_tokens for b in bills)

    def billed_tokens(self, since: int = 0) -> tuple[int, int]:
        """(prompt, completion) tokens billed."""
        bills = self.ledger(since)
        return sum(b.prompt_tokens for b in bills), sum(b.completion_tokens for b in bills)

    def billed_usd(self, input_per_million: float, output_per_million: float, since: int = 0, *,
                   batch_multiplier: float = 0.5, cached_input_per_million: float | None = None) -> float:
        """What the server charged, at these prices (Batch API rows at `batch_multiplier` of them)."""
        return sum(b.usd(input_per_million, output_per_million, cached_input_per_million)
                   * (batch_multiplier if b.kind == "batch" else 1.0) for b in self.ledger(since))

    def billed_keys(self, since: int = 0) -> Counter[str]:
        """Question key -> how many of its requests were billed."""
        return Counter(b.key for b in self.ledger(since))

    def billed_count(self, key: str) -> int:
        return self.billed_keys()[key]

    def billed_kinds(self, since: int = 0) -> Counter[str]:
        return Counter(b.kind for b in self.ledger(since))

    def open_keys(self) -> set[str]:
        """Keys the client may still be waiting on, as far as the server can tell: a request of theirs is
        being processed, or their latest request got no usable answer (so it will be retried)."""
        with self.lock:
            return self._open_keys()

    def _open_keys(self) -> set[str]:
        return {k for k, c in self.in_flight_keys.items() if c > 0} | \
               {k for k, kind in self.last_kind.items() if kind in _NO_ANSWER}

    def snapshot(self, action: Callable[[], Any] | None = None) -> dict[str, Any]:
        """The server's state at one instant, with `action` (e.g. SIGKILL to the client) done in that
        instant: no request is accepted, billed or counted out while it runs."""
        with self.lock:
            if action is not None:
                action()
            return {"in_flight": self.in_flight, "in_flight_keys": Counter(self.in_flight_keys),
                    "open_keys": self._open_keys(), "last_kind": dict(self.last_kind),
                    "chat_requests": self.chat_requests, "bills": len(self.bills)}

    def _fault_rng(self) -> random.Random:
        rng = getattr(self, "_rng", None)
        if rng is None:
            rng = self._rng = random.Random(self.fault_seed)
        return rng

    def _draw_fault(self) -> str | None:
        """At most one fault for this request, by `fault_rates` (call with the lock held)."""
        if not self.fault_rates:
            return None
        unknown = set(self.fault_rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"fault_rates: unknown kinds {sorted(unknown)}")
        draw, total = self._fault_rng().random(), 0.0
        for kind, rate in self.fault_rates.items():
            total += rate
            if draw < total:
                return kind
        return None

    def _storm_left(self, now: float) -> float:
        """Seconds left of the 429 storm now, 0 outside it."""
        if self.storm is None or self._first_chat is None:
            return 0.0
        start, duration = self.storm
        since = now - self._first_chat
        return start + duration - since if start <= since < start + duration else 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 (`port` 0: any free port; a stopped server can come back on its old port)."""
        from aiohttp import web

        async def models(request: web.Request) -> web.Response:
            if not self.serves_models:  # some servers have no model list
                return web.json_response({"error": {"message": "not found"}}, status=404)
            if self.refuses(request.headers.get("Authorization")):
                return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
            return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.model_ids]})

        async def health(_request: web.Request) -> web.Response:
            return web.Response(status=200)

        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            status, payload, headers, delay, key = self.handle(body, dict(request.headers))
            try:
                stall = headers.pop("x-fake-stall", None) is not None
                if status == 200 and payload is not None and body.get("stream") and not self.plain_streams:
                    with contextlib.suppress(ValueError):  # a cut body goes out as it is, below
                        return await self._stream(request, body, json.loads(payload), delay, stall)
                elif stall:
                    delay += self.hang_seconds
                delay += self._pace(payload) if status == 200 else 0.0
                if delay:
                    await asyncio.sleep(delay)
                if payload is None:  # "drop" / "drop_after": close the socket without answering
                    assert request.transport is not None
                    request.transport.close()
                    return web.Response(status=500)
                return web.Response(status=status, body=payload, headers=headers, content_type="application/json")
            finally:
                with self.lock:
                    self.in_flight -= 1
                    self.in_flight_keys[key] -= 1
                    if self.in_flight_keys[key] <= 0:
                        del self.in_flight_keys[key]

        app = web.Application(client_max_size=256 * 1024 * 1024)
        self._batch_routes(app)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", health)
        app.router.add_post("/v1/chat/completions", chat)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024, reuse_address=True)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}/v1"

    def _batch_routes(self, app: Any) -> None:
        """The Files and Batch APIs: uploads kept in memory, batches advanced by `_advance_batch` when read."""
        from aiohttp import web

        async def upload(request: web.Request) -> web.Response:
            form = await request.post()
            part = form["file"]
            data = part.file.read()  # type: ignore[union-attr]
            with self.lock:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = data
            return web.json_response({"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                      "filename": part.filename, "purpose": form.get("purpose"), "status": "processed"})  # type: ignore[union-attr]

        async def file_content(request: web.Request) -> web.Response:
            data = self.files.get(request.match_info["file_id"])
            if data is None:
                return web.json_response({"error": {"message": "no such file"}}, status=404)
            return web.Response(body=data, content_type="application/octet-stream")

        async def create_batch(request: web.Request) -> web.Response:
            body = await request.json()
            if body.get("input_file_id") not in self.files:
                return web.json_response({"error": {"message": "unknown input_file_id"}}, status=400)
            with self.lock:
                batch_id = f"batch_{len(self.batches) + 1}"
                self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                                          "input_file_id": body["input_file_id"], "completion_window": "24h",
                                          "status": "validating", "created_at": int(time.time()),
                                          "metadata": body.get("metadata"), "_started": time.monotonic()}
            return web.json_response(self._batch_view(batch_id))

        async def get_batch(request: web.Request) -> web.Response:
            batch_id = request.match_info["batch_id"]
            if batch_id not in self.batches:
                return web.json_response({"error": {"message": "no such batch"}}, status=404)
            self._advance_batch(batch_id)
            return web.json_response(self._batch_view(batch_id))

        async def list_batches(_request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [self._batch_view(b) for b in self.batches],
                                      "has_more": False})

        app.router.add_post("/v1/files", upload)
        app.router.add_get("/v1/files/{file_id}/content", file_content)
        app.router.add_post("/v1/batches", create_batch)
        app.router.add_get("/v1/batches", list_batches)
        app.router.add_get("/v1/batches/{batch_id}", get_batch)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self.thread.join(10)

    # -- behaviour -------------------------------------------------------------------------
    def handle(self, body: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, bytes | None, dict[str, str], float, str]:
        """(status, body or None to drop the connection, headers, seconds to wait before answering, key)."""
        prompt = body["messages"][-1]["content"]
        key, behaviour = self.behaviour_for(prompt)
        now = time.monotonic()
        with self.lock:
            if self.log_requests:
                self.requests.append({"body": body, "auth": headers.get("Authorization") or headers.get("authorization")})
            self.chat_requests += 1
            number = self.chat_requests
            if self._first_chat is None:
                self._first_chat = now
            attempt = self._seen[key]
            self._seen[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_keys[key] += 1
            drawn = self._draw_fault()  # drawn for every request, so a seed gives one sequence of draws
            kind = behaviour.always or (behaviour.failures[attempt] if attempt < len(behaviour.failures) else None)
            kind = kind or drawn
            storm_left = self._storm_left(now)
            if storm_left:
                kind = "storm"
            if kind:
                self.faults[kind] += 1
            self.last_kind[key] = kind or "ok"
        low, high = self.latency
        # The request is received (and logged) first, then the "model" takes its time.
        delay = random.uniform(low, high) if high else 0.0
        if kind in ("slow", "hang"):  # longer than the client's timeout, then a normal answer nobody reads
            delay += self.hang_seconds
        status, payload, extra = self._answer(body, headers, key, behaviour, kind, number=number,
                                              retry_after=storm_left or None)
        if kind == "stall" and status == 200:
            extra["x-fake-stall"] = "1"
        return status, payload, extra, delay, key

    @staticmethod
    def _error(status: int, message: str, kind: str) -> tuple[int, bytes, dict[str, str]]:
        return status, json.dumps({"error": {"message": message, "type": kind}}).encode(), {}

    def _answer(self, body: dict[str, Any], headers: dict[str, str], key: str, behaviour: Behaviour,
                kind: str | None, *, number: int = 0, retry_after: float | None = None,
                bill_kind: str | None = None) -> tuple[int, bytes | None, dict[str, str]]:
        if self.refuses(headers.get("Authorization") or headers.get("authorization")) or kind == "401":
            return self._error(401, "Incorrect API key provided", "invalid_request_error")
        if kind in ("429", "storm"):
            return self._too_many(retry_after or self.retry_after)
        wait = self._limits(body)
        if wait:
            return self._too_many(wait)
        if kind in ("500", "502", "503", "5xx"):
            return self._error(500 if kind == "5xx" else int(kind), "The server had an error", "server_error")
        if kind == "400":
            return self._error(400, "Invalid 'messages'", "invalid_request_error")
        fmt = (body.get("response_format") or {}).get("type")
        if fmt is not None and fmt not in self.accepts_formats:
            return self._error(500, f"response_format type {fmt!r} is not supported", "server_error")
        # From here on the request is processed, so it is billed, whatever the client then gets.
        n = int(body.get("n") or 1) if self.supports_n else 1
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        cached_tokens = self._cached(body)
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 10**9
        choices, completion_tokens, reasoning_tokens = [], 0, 0
        for i in range(n):
            # Choice i of this request answers sample (earlier successes for this key + i).
            choice, used, thought = self._choice(behaviour, self.served[key] + i, cap)
            choices.append({"index": i, **choice, "logprobs": None})
            completion_tokens += used
            reasoning_tokens += thought
        self._bill(number, prompt_tokens, completion_tokens, n, key, bill_kind or kind or "ok")
        with self.lock:
            last = self.bills[-1]
            self.bills[-1] = Bill(last.request, last.prompt_tokens, last.completion_tokens, last.n, last.key,
                                  last.kind, reasoning_tokens if behaviour.shape in _REPORTS_REASONING else 0,
                                  cached_tokens)
        if kind in ("drop", "drop_after"):  # processed, then the connection is closed without an answer
            return 0, None, {}
        if kind not in ("malformed", "cut"):
            with self.lock:
                self.served[key] += n
        payload = {
            "id": f"chatcmpl-{number or len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-teacher"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if behaviour.reasoning or self.prompt_cache:  # usage details, as reasoning servers and caches report them
            payload["usage"]["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
            payload["usage"]["completion_tokens_details"] = {
                "reasoning_tokens": reasoning_tokens if behaviour.shape in _REPORTS_REASONING else 0}
        if kind == "no_usage":
            del payload["usage"]
        data = json.dumps(payload).encode()
        if kind in ("malformed", "cut"):  # a 200 whose body stops in the middle of the JSON
            return 200, data[: max(1, min(len(data) // 2, data.index(b'"choices"') + 20))], {}
        return 200, data, self._limit_headers()

    # -- reasoning, caching, streaming -------------------------------------------------------------
    @staticmethod
    def _choice(behaviour: Behaviour, number: int, cap: int) -> tuple[dict[str, Any], int, int]:
        """(choice without its index, completion tokens, reasoning tokens): the trace comes first and counts
        against the cap, so a small cap cuts inside the thinking."""
        words = behaviour.answers[number % len(behaviour.answers)].split(" ")
        trace = behaviour.reasoning[number % len(behaviour.reasoning)].split(" ") if behaviour.reasoning else []
        finish = behaviour.finish_reason
        if len(trace) >= cap and trace:
            trace, words, finish = trace[:cap], [], "length"
        elif len(trace) + len(words) > cap:  # a real server stops at max_tokens (a word is a token here)
            words, finish = words[: cap - len(trace)], "length"
        text, thought = " ".join(words), " ".join(trace)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        shape = behaviour.shape if trace else "none"
        if shape in ("reasoning_content", "reasoning"):
            message[shape] = thought
            message["content"] = text or None  # vLLM sends null content when it stopped inside the thinking
        elif shape == "think":
            message["content"] = f"<think>\n{thought}" + (f"\n</think>\n\n{text}" if words else "")
        elif shape == "think_no_open":
            message["content"] = thought + (f"\n</think>\n\n{text}" if words else "")
        return {"message": message, "finish_reason": finish}, len(words) + len(trace), len(trace)

    def _cached(self, body: dict[str, Any]) -> int:
        """Prompt words shared with an earlier prompt's start, in whole blocks (a provider's prompt cache)."""
        if not self.prompt_cache:
            return 0
        words = [w for m in body["messages"] for w in m["content"].split()]
        with self.lock:
            best = 0
            for earlier in self._prompts[-64:]:
                same = 0
                for a, b in zip(words, earlier, strict=False):
                    if a != b:
                        break
                    same += 1
                best = max(best, same)
            self._prompts.append(words)
        return best // self.cache_block * self.cache_block

    def _pace(self, payload: bytes | None) -> float:
        """Seconds a plain answer takes to generate at `tokens_per_second` (scaled)."""
        if not self.tokens_per_second or not payload:
            return 0.0
        try:
            tokens = json.loads(payload)["usage"]["completion_tokens"]
        except (ValueError, KeyError, TypeError):
            return 0.0
        return tokens / self.tokens_per_second * self.time_scale

    async def _stream(self, request: Any, body: dict[str, Any], data: dict[str, Any], delay: float,
                      stall: bool) -> Any:
        """The answer as chat.completion.chunk events, paced; usage last when asked for."""
        from aiohttp import web

        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if delay:
            await asyncio.sleep(delay)
        head = {k: data[k] for k in ("id", "created", "model")}
        pieces = list(self._pieces(data))
        for i, (index, delta, finish, words) in enumerate(pieces):
            if self.tokens_per_second and words:
                await asyncio.sleep(words / self.tokens_per_second * self.time_scale)
            if stall and i == len(pieces) // 2:
                await asyncio.sleep(self.hang_seconds)
            chunk = {**head, "object": "chat.completion.chunk",
                     "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if "usage" in data and (body.get("stream_options") or {}).get("include_usage"):
            chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": data["usage"]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _pieces(self, data: dict[str, Any]) -> Any:
        """(choice index, delta, finish_reason, words) per chunk: the trace first, then the answer."""
        hidden = (data.get("usage") or {}).get("completion_tokens_details", {}).get("reasoning_tokens", 0)
        size = self.stream_chunk_words
        for choice in data["choices"]:
            message, index = choice["message"], choice["index"]
            yield index, {"role": "assistant"}, None, 0
            fields = [f for f in ("reasoning_content", "reasoning") if f in message] + ["content"]
            if not any(f in message for f in ("reasoning_content", "reasoning")) and hidden:
                yield index, {}, None, hidden  # an o-series model thinks in silence
            for name in fields:
                words = (message.get(name) or "").split(" ")
                for at in range(0, len(words) if message.get(name) else 0, size):
                    part = " ".join(words[at:at + size]) + (" " if at + size < len(words) else "")
                    yield index, {name: part}, None, len(words[at:at + size])
            yield index, {}, choice["finish_reason"] if self.stream_finish_reason else None, 0

    # -- Batch API -------------------------------------------------------------------------------
    def _batch_view(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

    def _advance_batch(self, batch_id: str) -> None:
        batch = self.batches[batch_id]
        if batch["status"] in ("completed", "expired", "failed", "cancelled"):
            return
        if time.monotonic() - batch["_started"] < self.batch_seconds:
            batch["status"] = "in_progress"
            return
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
        total = len(lines)
        if self.batch_expire:
            lines = lines[: total // 2]
        out, err = [], []
        for line in lines:
            key, behaviour = self.behaviour_for(line["body"]["messages"][-1]["content"])
            with self.lock:
                self.requests.append({"body": line["body"], "auth": None, "batch": batch_id})
                attempt = self._seen[key]
                self._seen[key] += 1
            kind = behaviour.always or (behaviour.failures[attempt] if attempt < len(behaviour.failures) else None)
            # A batch has no sockets to drop or bodies to garble: those become 500 rows; "slow" is just slow.
            kind = {"drop": "500", "drop_after": "500", "malformed": "500", "cut": "500", "slow": None,
                    "hang": None, "storm": "429"}.get(kind or "", kind)
            status, payload, _ = self._answer(line["body"], {}, key, behaviour, kind, bill_kind="batch")
            result = {"id": f"batch_req_{len(out) + len(err)}", "custom_id": line["custom_id"],
                      "response": {"status_code": status, "request_id": "req", "body": json.loads(payload or b"{}")},
                      "error": None}
            (out if status == 200 else err).append(result)
        with self.lock:
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    file_id = f"file-{len(self.files) + 1}"
                    self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    batch[name] = file_id
        batch["status"] = "expired" if self.batch_expire else "completed"
        batch["request_counts"] = {"total": total, "completed": len(out), "failed": len(err)}

    # -- rate limits ---------------------------------------------------------------------------
    def _limits(self, body: dict[str, Any]) -> float:
        """Seconds until this request would be allowed; 0 when it is (and it is counted)."""
        with self.lock:
            if not hasattr(self, "_buckets"):
                self._buckets = (ServerBucket(self.rpm_limit) if self.rpm_limit else None,
                                 ServerBucket(self.tpm_limit) if self.tpm_limit else None)
            requests, tokens = self._buckets
            wait = requests.take(1) if requests else 0.0
            if not wait and tokens:
                words = sum(len(m["content"].split()) for m in body["messages"])
                cost = words + (body.get("max_completion_tokens") or body.get("max_tokens") or 0) * int(body.get("n") or 1)
                wait = tokens.take(cost)
                if wait and requests:
                    requests.level += 1  # refused requests do not count
            if wait:
                self.rejected_429 += 1
            return wait

    def _limit_headers(self) -> dict[str, str]:
        """x-ratelimit-* headers for the limits this server enforces (a server with none sends none)."""
        buckets = getattr(self, "_buckets", (None, None))
        headers = {}
        for name, limit, bucket in (("requests", self.rpm_limit, buckets[0]), ("tokens", self.tpm_limit, buckets[1])):
            if not limit:
                continue
            headers[f"x-ratelimit-limit-{name}"] = str(int(limit))
            remaining = int(max(0.0, bucket.level) * 60) if bucket else int(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
            headers[f"x-ratelimit-reset-{name}"] = "1s"
        return headers

    def _too_many(self, retry_after: float) -> tuple[int, bytes, dict[str, str]]:
        headers = self._limit_headers()
        headers["retry-after"] = f"{retry_after:.3f}"
        headers["x-ratelimit-remaining-requests"] = "0"
        return 429, json.dumps({"error": {"message": "Rate limit reached", "type": "requests",
                                          "code": "rate_limit_exceeded"}}).encode(), headers


def count_by(requests: list[dict[str, Any]], predicate: Callable[[str], bool]) -> int:
    return sum(1 for r in requests if predicate(r["body"]["messages"][-1]["content"]))
