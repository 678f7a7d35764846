"""Print how the llama.cpp server answers what distilforge sends (the facts behind tests_compat/README.md).

    .venv/bin/python tests_compat/probe_server.py            # starts its own server on a free loopback port
    .venv/bin/python tests_compat/probe_server.py --url http://127.0.0.1:8080   # or probes a running one

Each probe prints its status code, its time and the part of the body that matters. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import MODEL_ID, LlamaServer, embedded_gguf, free_port

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "correctness": {"type": "integer", "minimum": 1, "maximum": 5},
        "relevance": {"type": "integer", "minimum": 1, "maximum": 5},
        "clarity": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "default": ""},
    },
    "required": ["correctness", "relevance", "clarity"],
}
JUDGE = ("Score this answer from 1 to 5 on correctness, relevance and clarity.\nQuestion: What is 2 + 3?\n"
         'Answer: 2 + 3 = 5. The answer is 5.\nReply with JSON only: {"correctness": 1-5, "relevance": 1-5, '
         '"clarity": 1-5, "reason": "one sentence"}')
COT = ("A baker sells 12 rolls in the morning and 7 in the afternoon. How many rolls does she sell?\n\n"
       'Think step by step, then finish with one line of the form "The answer is X." where X is a number.')


def request(root: str, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any, float]:
    host, port = root.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    t0 = time.monotonic()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    seconds = time.monotonic() - t0
    conn.close()
    try:
        return resp.status, json.loads(text), seconds
    except ValueError:
        return resp.status, text, seconds


def chat(root: str, content: str, **extra: Any) -> tuple[int, Any, float]:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 128,
            "temperature": 0.7, **extra}
    return request(root, "POST", "/v1/chat/completions", body)


def summary(status: int, body: Any, seconds: float) -> str:
    if isinstance(body, dict) and "choices" in body:
        choices = body["choices"]
        first = choices[0] if choices else {}
        text = (first.get("message") or {}).get("content", "")
        return (f"{status} in {seconds:.2f}s: model={body.get('model')!r} choices={len(choices)} "
                f"finish={first.get('finish_reason')} usage={body.get('usage')} text={text[:160]!r}")
    return f"{status} in {seconds:.2f}s: {json.dumps(body)[:400] if not isinstance(body, str) else body[:400]!r}"


def probe(root: str) -> None:
    for path in ("/v1/models", "/health", "/v1/health"):
        print(f"GET {path}:", summary(*request(root, "GET", path)))
    print("plain chat:", summary(*chat(root, COT)))
    print("n=3:", summary(*chat(root, COT, n=3)))
    schema_rf = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}
    print("json_schema (strict):", summary(*chat(root, JUDGE, response_format=schema_rf)))
    print("json_object + schema:", summary(*chat(root, JUDGE, response_format={"type": "json_object",
                                                                               "schema": VERDICT_SCHEMA})))
    print("json_object:", summary(*chat(root, JUDGE, response_format={"type": "json_object"})))
    print("unknown model:", summary(*chat(root, COT, model="gpt-4o-mini")))
    print("max_tokens 4:", summary(*chat(root, COT, max_tokens=4)))
    print("max_completion_tokens 4 only:", summary(*chat(root, COT, max_tokens=None, max_completion_tokens=4)))
    print("temperature 'hot':", summary(*chat(root, COT, temperature="hot")))
    print("malformed JSON body:", summary(*request(root, "POST", "/v1/chat/completions", raw=b"{not json")))

    times = []
    for _ in range(5):
        _, body, seconds = chat(root, COT, max_tokens=128)
        times.append((seconds, body["usage"]["completion_tokens"]))
    print("CoT x5 (max_tokens 128):", ", ".join(f"{s:.2f}s/{n} tok" for s, n in times))

    spans: dict[int, tuple[float, float]] = {}
    base = time.monotonic()

    def one(i: int) -> None:
        t0 = time.monotonic() - base
        chat(root, COT, max_tokens=64, temperature=0.0)
        spans[i] = (t0, time.monotonic() - base)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("4 concurrent requests (sent, done):", sorted((round(a, 2), round(b, 2)) for a, b in spans.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="root URL of a running server (default: start one)")
    args = parser.parse_args()
    if args.url:
        probe(args.url.rstrip("/"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = LlamaServer(embedded_gguf(), free_port(), Path(tmp) / "server.log")
        print(f"server ready in {server.start():.2f}s: {' '.join(server.command())}")
        try:
            probe(server.root)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
