"""Ray ranks against a latency-bound teacher: throughput and CPU per rank, and Ray's fixed overhead.

Run: .venv/bin/python benchmarks/ray_scaling.py [--requests 3000] [--latency 0.5] [--concurrency 64]

The fake OpenAI-compatible server runs in its own process (so it does not share an interpreter
with the ranks). Each row is a whole `distilforge run` as a user runs it, with `--executor`:
- throughput: 1 and 2 ranks, each with `teacher.max_concurrency` requests in flight against a teacher
  that answers after `latency` seconds: requests/s over the request window, each rank's CPU seconds
  and its CPU use (CPU s / wall s), and the whole command's time;
- overhead: a small job (20 seeds) locally and on Ray (a local Ray started for the run, and shut down).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

SERVER = """
import sys, time
sys.path.insert(0, {tests!r})
from fake_openai import Behaviour, FakeOpenAI
server = FakeOpenAI(latency=({latency}, {latency}), log_requests=False,
                    default=Behaviour(["Two plus two is four.\\nThe answer is 4."]))
print(server.start(), flush=True)
while True:
    time.sleep(1)
"""


def job(folder: Path, url: str, n: int, concurrency: int) -> Path:
    seeds = folder / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": f"Q{i}: what is 2 + 2?", "answer": "#### 4"}) + "\n"
                             for i in range(n)))
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump({
        "seeds": {"path": str(seeds)},
        "teacher": {"backend": "openai", "model": "fake", "base_url": url, "api_key_env": None,
                    "max_concurrency": concurrency, "params": {"max_tokens": 64}},
    }))
    return config


def run(config: Path, out: Path, executor: str) -> tuple[dict, float]:
    start = time.perf_counter()
    # A response cache of its own: the same seeds again would be answered from the shared one.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILFORGE_RESPONSE_CACHE": str(out.parent / "responses.sqlite")}
    subprocess.run([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out), "--executor", executor],
                   check=True, capture_output=True, env=env)
    return json.loads((out / "run.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per rank")
    args = parser.parse_args()
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=tests, latency=args.latency)],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()  # type: ignore[union-attr]
    console = Console()
    try:
        table = Table(title=f"{args.requests} requests, {args.latency * 1000:.0f} ms teacher, "
                            f"{args.concurrency} in flight per rank")
        for col in ("executor", "ranks", "requests/s", "CPU s per rank", "CPU use per rank", "command s"):
            table.add_column(col, justify="right")
        for executor in ("local", "ray:1", "ray:2"):
            with tempfile.TemporaryDirectory() as tmp:
                summary, whole = run(job(Path(tmp), url, args.requests, args.concurrency), Path(tmp) / "run", executor)
            assert summary["kept"] == args.requests, summary["kept"]
            ranks = summary["executor"]["ranks"]
            table.add_row(executor.split(":")[0], str(len(ranks)), f"{args.requests / summary['wall_seconds']:,.0f}",
                          " / ".join(f"{r['cpu_seconds']:.1f}" for r in ranks),
                          " / ".join(f"{r['cpu_seconds'] / max(r['seconds'], 1e-9):.0%}" for r in ranks), f"{whole:.1f}")
        console.print(table)
        small = Table(title="a small job (20 seeds): local vs Ray, whole command")
        for col in ("executor", "command s", "overhead s"):
            small.add_column(col, justify="right")
        times = {}
        for executor in ("local", "ray:2"):
            with tempfile.TemporaryDirectory() as tmp:
                _, times[executor] = run(job(Path(tmp), url, 20, args.concurrency), Path(tmp) / "run", executor)
        small.add_row("local", f"{times['local']:.1f}", "-")
        small.add_row("ray, 2 ranks", f"{times['ray:2']:.1f}", f"{times['ray:2'] - times['local']:.1f}")
        console.print(small)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
