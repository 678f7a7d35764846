"""How close the generate stage gets to the ideal rate against an API teacher, and how fast the
parse + filter steps run on their own.

Run: .venv/bin/python benchmarks/pipeline_throughput.py [--seeds 400] [--latency 0.05]

Table 1 sends seeds x 1 sample to the fake OpenAI-compatible server (tests/fake_openai.py, real
HTTP on loopback) with a fixed per-request latency, at several concurrency limits. "ideal" is
seeds x latency / concurrency; "efficiency" is ideal / measured wall time (1.0 = no overhead).
Table 2 pushes synthetic teacher answers through ParseAnswer and the default filters.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import Behaviour, FakeOpenAI
from rich.console import Console
from rich.table import Table

from distilforge.modes import ParseAnswer
from distilforge.pipeline.lifecycle import run_generate
from distilforge.pipeline.steps import chain
from distilforge.quality.builtin import default_filters
from distilforge.schemas import JobConfig
from distilforge.schemas.records import Record


def bench_generate(seeds: int, latency: float, concurrencies: list[int]) -> Table:
    table = Table(title=f"generate stage: {seeds} requests, {latency * 1000:.0f} ms server latency")
    for col in ("concurrency", "wall s", "ideal s", "efficiency", "requests/s"):
        table.add_column(col, justify="right")
    fake = FakeOpenAI(latency=(latency, latency), default=Behaviour(["2 + 2 = 4.\nThe answer is 4."]))
    base_url = fake.start()
    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    try:
        for concurrency in concurrencies:
            with tempfile.TemporaryDirectory() as tmp:
                seeds_path = Path(tmp) / "seeds.jsonl"
                seeds_path.write_text("".join(
                    json.dumps({"question": f"Q{i}: 2 + 2?", "answer": "#### 4"}) + "\n" for i in range(seeds)))
                config = JobConfig.model_validate({
                    "seeds": {"path": str(seeds_path)},
                    "teacher": {"backend": "openai", "model": "fake", "base_url": base_url, "api_key_env": None,
                                "max_concurrency": concurrency},
                })
                start = time.perf_counter()
                run = run_generate(config, Path(tmp) / "run", quiet)
                wall = run["wall_seconds"]
                total = time.perf_counter() - start
                assert run["kept"] == seeds, run
                ideal = seeds * latency / concurrency
                table.add_row(str(concurrency), f"{wall:.2f}", f"{ideal:.2f}", f"{ideal / wall:.2f}",
                              f"{seeds / wall:.0f}")
                del total
    finally:
        fake.stop()
    return table


def bench_filters(n: int) -> Table:
    texts = [
        "3 dozen is 36 eggs. 36 * $0.50 = $18.\nThe answer is $18.",
        "Two and two make five.\nThe answer is 5.",
        "Half of one: $\\boxed{\\frac{1}{2}}$",
        "I think it is a lot.",
    ]

    async def records():
        for i in range(n):
            yield Record(seed_id=str(i // 4), sample_index=i % 4, question="q", gold="18", answer_type="number",
                         prompt=[], teacher_model="t", text=texts[i % 4], finish_reason="stop")

    async def drain() -> int:
        count = 0
        async for _ in chain(records(), [ParseAnswer(), *default_filters()]):
            count += 1
        return count

    start = time.perf_counter()
    kept = asyncio.run(drain())
    seconds = time.perf_counter() - start
    table = Table(title="parse + default filters (CPU, one core)")
    for col in ("records", "kept", "seconds", "records/s"):
        table.add_column(col, justify="right")
    table.add_row(str(n), str(kept), f"{seconds:.2f}", f"{n / seconds:,.0f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--filter-records", type=int, default=100_000)
    args = parser.parse_args()
    console = Console()
    console.print(bench_generate(args.seeds, args.latency, args.concurrency))
    console.print(bench_filters(args.filter_records))


if __name__ == "__main__":
    main()
