"""A realistic fake OpenAI-compatible server on loopback, for tests only.

Real HTTP (aiohttp.web on its own event loop in a background thread, so it can keep up with the
client): `/v1/chat/completions` and `/v1/models`, usage counts, `n`
choices, per-request latency, 429 with Retry-After and x-ratelimit-* headers, 5xx, 400, malformed
bodies, and `finish_reason: length`. A `script` maps a question to how the server behaves for it.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Behaviour:
    """How the server answers one question. `answers[i]` is choice i's text (cycled)."""

    answers: list[str] = field(default_factory=lambda: ["The answer is 0."])
    finish_reason: str = "stop"
    # Failures served before success, in order: "429", "500", "503", "malformed", "400", "drop", "slow".
    failures: list[str] = field(default_factory=list)
    always: str | None = None  # fail every time with this kind


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
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # question-key -> successful responses
    _seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0

    def behaviour_for(self, prompt: str) -> tuple[str, Behaviour]:
        for key, behaviour in self.script.items():
            if key in prompt:
                return key, behaviour
        return "", self.default

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        from aiohttp import web

        async def models(_request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.model_ids]})

        async def health(_request: web.Request) -> web.Response:
            return web.Response(status=200)

        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            status, payload, headers, delay = self.handle(body, dict(request.headers))
            try:
                if delay:
                    await asyncio.sleep(delay)
                if payload is None:  # "drop": close the socket without answering
                    assert request.transport is not None
                    request.transport.close()
                    return web.Response(status=500)
                return web.Response(status=status, body=payload, headers=headers, content_type="application/json")
            finally:
                with self.lock:
                    self.in_flight -= 1

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

        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/files", upload)
        app.router.add_get("/v1/files/{file_id}/content", file_content)
        app.router.add_post("/v1/batches", create_batch)
        app.router.add_get("/v1/batches", list_batches)
        app.router.add_get("/v1/batches/{batch_id}", get_batch)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", health)
        app.router.add_post("/v1/chat/completions", chat)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
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

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self.thread.join(10)

    # -- behaviour -------------------------------------------------------------------------
    def handle(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes | None, dict[str, str], float]:
        """(status, body or None to drop the connection, headers, seconds to wait before answering)."""
        prompt = body["messages"][-1]["content"]
        key, behaviour = self.behaviour_for(prompt)
        with self.lock:
            if self.log_requests:
                self.requests.append({"body": body, "auth": headers.get("Authorization") or headers.get("authorization")})
            attempt = self._seen[key]
            self._seen[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        low, high = self.latency
        # The request is received (and logged) first, then the "model" takes its time.
        delay = random.uniform(low, high) if high else 0.0
        kind = behaviour.always or (behaviour.failures[attempt] if attempt < len(behaviour.failures) else None)
        if kind == "slow":  # longer than the client's timeout, then a normal answer nobody reads
            delay += 1.5
        status, payload, extra = self._answer(body, headers, key, behaviour, kind)
        return status, payload, extra, delay

    def _answer(self, body: dict[str, Any], headers: dict[str, str], key: str, behaviour: Behaviour,
                kind: str | None) -> tuple[int, bytes | None, dict[str, str]]:
        if self.require_key and (self.requests[-1]["auth"] != f"Bearer {self.require_key}"):
            return 401, json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}).encode(), {}
        if kind == "429":
            return self._too_many(self.retry_after)
        wait = self._limits(body)
        if wait:
            return self._too_many(wait)
        if kind in ("500", "502", "503"):
            return int(kind), json.dumps({"error": {"message": "The server had an error", "type": "server_error"}}).encode(), {}
        if kind == "400":
            return 400, json.dumps({"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}}).encode(), {}
        if kind == "malformed":
            return 200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess', {}
        if kind == "drop":
            return 0, None, {}
        n = int(body.get("n") or 1) if self.supports_n else 1
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 10**9
        choices, completion_tokens = [], 0
        for i in range(n):
            # Choice i of this request answers sample (earlier successes for this key + i).
            text = behaviour.answers[(self.served[key] + i) % len(behaviour.answers)]
            words = text.split(" ")
            finish = behaviour.finish_reason
            if len(words) > cap:  # a real server stops at max_tokens (a word is a token here)
                text, finish = " ".join(words[:cap]), "length"
            completion_tokens += min(len(words), cap)
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish, "logprobs": None})
        with self.lock:
            self.served[key] += n
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-teacher"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return 200, json.dumps(payload).encode(), self._limit_headers()

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
            kind = {"drop": "500", "malformed": "500", "slow": None}.get(kind or "", kind)
            status, payload, _ = self._answer(line["body"], {}, key, behaviour, kind)
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
        buckets = getattr(self, "_buckets", (None, None))
        headers = {}
        for name, limit, bucket in (("requests", self.rpm_limit, buckets[0]), ("tokens", self.tpm_limit, buckets[1])):
            headers[f"x-ratelimit-limit-{name}"] = str(int(limit or 1_000_000))
            remaining = int(max(0.0, bucket.level) * 60) if bucket else int(limit or 1_000_000)
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
