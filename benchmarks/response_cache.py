"""The response cache: the same job run three times into new folders, side by side.

Run: .venv/bin/python benchmarks/response_cache.py [--seeds 400] [--samples 2] [--latency 0.2]

The fake OpenAI-compatible server (tests/fake_openai.py, real HTTP on loopback) runs in this process and
bills every request it accepts. Each run is `distilforge run job.yaml --output NEW_FOLDER` as a user runs
it, in its own process, with one cache file under a temporary root:
- cold: an empty cache (every answer is paid for);
- warm: the same job into another folder (every answer from the cache);
- off: the same again with DISTILFORGE_RESPONSE_CACHE=off (the peers' behaviour without a cache).
The table gives, per run, the server's bill (requests, tokens), the command's wall time and its ratio to
the cold run, and run.json's requests.cached and cost_usd.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import yaml
from fake_openai import Behaviour, FakeOpenAI
from rich.console import Console
from rich.table import Table


def job(tmp: Path, base_url: str, seeds: int, samples: int) -> Path:
    path = tmp / "seeds.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q{i}: {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(seeds)))
    config = {"name": "cache-bench", "seeds": {"path": str(path)},
              "teacher": {"backend": "openai", "model": "fake-teacher", "base_url": base_url,
                          "api_key_env": "BENCH_KEY", "max_concurrency": 64, "params": {"max_tokens": 64}},
              "generation": {"mode": "cot", "samples_per_seed": samples},
              "budget": {"prices": {"input_per_million": 0.15, "output_per_million": 0.6}}}
    out = tmp / "job.yaml"
    out.write_text(yaml.safe_dump(config))
    return out


def run(config: Path, out: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request at the server")
    args = parser.parse_args()
    fake = FakeOpenAI(default=Behaviour([f"Adding one.\nThe answer is {i}." for i in range(args.samples)]),
                      latency=(args.latency, args.latency))
    base_url = fake.start()
    table = Table(title=f"{args.seeds} seeds x {args.samples} samples, {args.latency}s per request")
    for col in ("run", "billed requests", "billed tokens", "wall s", "wall / cold", "requests.cached", "cost_usd"):
        table.add_column(col, justify="right")
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            config = job(tmp, base_url, args.seeds, args.samples)
            env = {**os.environ, "BENCH_KEY": "sk-bench", "HF_HUB_OFFLINE": "1",
                   "DISTILFORGE_RESPONSE_CACHE": str(tmp / "cache" / "responses.sqlite")}
            cold = None
            for name, extra in (("cold", {}), ("warm", {}), ("off", {"DISTILFORGE_RESPONSE_CACHE": "off"})):
                mark = len(fake.bills)
                seconds = run(config, tmp / name, {**env, **extra})
                cold = cold or seconds
                bills = fake.ledger(mark)
                summary = json.loads((tmp / name / "run.json").read_text())
                table.add_row(name, str(len(bills)), str(sum(b.prompt_tokens + b.completion_tokens for b in bills)),
                              f"{seconds:.1f}", f"{seconds / cold:.2f}", str(summary["requests"].get("cached", 0)),
                              f"{summary['cost_usd']:.4f}")
    finally:
        fake.stop()
    Console().print(table)


if __name__ == "__main__":
    main()
