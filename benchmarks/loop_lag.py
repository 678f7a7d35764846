"""Event-loop lag while requests are in flight, against a calibrated idle loop in the same process.

Run: .venv/bin/python benchmarks/loop_lag.py [--requests 1536] [--concurrency 256]

The fake OpenAI-compatible server (tests/fake_openai.py, 0.5-0.7 s per answer) runs in its own
process. The job runs in a fresh interpreter, as a user's run would, with the service's shared
monthly ledger (SQLite) as its budget. In that interpreter, first an idle asyncio loop runs the same
0.25 s timer for a few seconds (the calibration: what the machine's load alone costs a timer), then
the run's own progress timer measures the loop while requests are in flight. Each period's overrun is
how long the loop could not run it. The table gives both, side by side, and their ratio; `make test`
asserts only a stall of 1 s or more (tests/test_event_loop.py), which no load explains.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_event_loop import RUN, SERVER  # noqa: E402  (the test's own scenario, measured here)

CALIBRATE = """
import asyncio, itertools, json, time

async def idle(periods):
    beats = []
    for _ in range(periods):
        await asyncio.sleep(0.25)
        beats.append(time.monotonic())
    return [b - a - 0.25 for a, b in itertools.pairwise(beats)]

print("IDLE " + json.dumps(asyncio.run(idle(24))), flush=True)
"""


def _stats(lags: list[float]) -> tuple[float, float, float]:
    ordered = sorted(lags)
    return (ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99) - 1 if len(ordered) > 1 else 0] * 1000,
            ordered[-1] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1536)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(REPO / "tests"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            seeds = folder / "seeds.jsonl"
            seeds.write_text("".join(json.dumps({"question": f"L{i}: 0 + 1?", "answer": "#### 1"}) + "\n"
                                     for i in range(args.requests)))
            job = {"name": "lag", "seeds": {"path": str(seeds)},
                   "teacher": {"backend": "openai", "model": "fake-teacher", "base_url": base_url, "api_key_env": None,
                               "max_concurrency": args.concurrency, "params": {"max_tokens": 64}},
                   "generation": {"mode": "cot", "samples_per_seed": 1},
                   "budget": {"prices": {"input_per_million": 1.0, "output_per_million": 1.0}, "max_usd": 100.0}}
            (folder / "job.json").write_text(json.dumps(job))
            script = CALIBRATE + RUN.format(run_dir=str(folder / "run"))
            done = subprocess.run([sys.executable, "-c", script, str(folder / "job.json"),
                                   f"sqlite:///{folder / 's.db'}"], capture_output=True, text=True, timeout=900)
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        lines = done.stdout.strip().splitlines()
        idle = json.loads(next(line for line in lines if line.startswith("IDLE "))[5:])
        out = json.loads(lines[-1])
        beats = out["beats"]
        busy = [b - a - 0.25 for (a, n_a), (b, _) in itertools.pairwise(beats) if 0 < n_a < args.requests]
        print(f"{args.requests} requests, {args.concurrency} in flight; timer period 250 ms")
        print(f"{'loop':<28}{'periods':>8}{'median ms':>11}{'p99 ms':>9}{'max ms':>9}")
        for name, lags in (("idle (calibration)", idle), ("run, requests in flight", busy)):
            print(f"{name:<28}{len(lags):>8}" + "".join(f"{v:>{w}.1f}" for v, w in zip(_stats(lags), (11, 9, 9), strict=True)))
        print(f"max lag, run / idle: {max(busy) / max(max(idle), 1e-3):.1f}x")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
