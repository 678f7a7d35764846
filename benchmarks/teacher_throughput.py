"""distilforge against the bare OpenAI SDK on the same prompts, and against a rate limit.

Run: .venv/bin/python benchmarks/teacher_throughput.py [--requests 2000] [--concurrency 256]

All in one process against the fake OpenAI-compatible server (tests/fake_openai.py, aiohttp on its
own thread, real HTTP on loopback):
1. The ceiling: a bare `AsyncOpenAI` (aiohttp transport, pool sized to the concurrency) + semaphore
   loop over N prompts; then `distilforge generate` on the same N prompts (journal, parsing, filters,
   dataset writing included). Requests/s for both and the ratio, at 0 and 200 ms server latency.
2. A rate limit enforced by the server (a bucket of one second of the RPM): the fraction of the limit
   distilforge sustains with `teacher.rpm` set, and the 429s it provoked.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx2
import openai
from fake_openai import Behaviour, FakeOpenAI
from rich.console import Console
from rich.table import Table

from distilforge.core.config import JobConfig
from distilforge.run.lifecycle import run_generate

ANSWER = "Two plus two is four.\nThe answer is 4."


def prompts(n: int) -> list[str]:
    return [f"Q{i}: what is 2 + 2?" for i in range(n)]


async def bare_loop(base_url: str, n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(
        api_key="EMPTY", base_url=base_url, max_retries=0,
        http_client=openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)),
    )
    slots = asyncio.Semaphore(concurrency)

    async def one(text: str) -> None:
        async with slots:
            await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": text}],
                                                 max_tokens=64, temperature=0.7)

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts(n)))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def distilforge_run(base_url: str, n: int, concurrency: int, rpm: float | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"question": p, "answer": "#### 4"}) + "\n" for p in prompts(n)))
        config = JobConfig.model_validate({
            "seeds": {"path": str(seeds)},
            "teacher": {"backend": "openai", "model": "fake", "base_url": base_url, "api_key_env": None,
                        "max_concurrency": concurrency, "rpm": rpm, "params": {"max_tokens": 64}},
        })
        with open(os.devnull, "w") as devnull:
            run = run_generate(config, Path(tmp) / "run", Console(file=devnull))
        assert run["kept"] == n, run
        return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument("--rpm-requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()

    table = Table(title=f"requests/s, {args.requests} requests, concurrency {args.concurrency}, "
                        f"median of {args.repeats} (one process, loopback)")
    for col in ("server latency", "bare AsyncOpenAI", "distilforge", "ratio"):
        table.add_column(col, justify="right")
    for latency in (0.0, 0.2):
        fake = FakeOpenAI(latency=(latency, latency), default=Behaviour([ANSWER]))
        url = fake.start()
        try:
            asyncio.run(bare_loop(url, 200, args.concurrency))  # warm-up
            # Alternate the two and take medians: on 2 shared cores single runs vary by +-15%.
            bares, ours = [], []
            for _ in range(args.repeats):
                bares.append(args.requests / asyncio.run(bare_loop(url, args.requests, args.concurrency)))
                ours.append(args.requests / distilforge_run(url, args.requests, args.concurrency)["wall_seconds"])
        finally:
            fake.stop()
        bare, mine = statistics.median(bares), statistics.median(ours)
        table.add_row(f"{latency * 1000:.0f} ms", f"{bare:,.0f}", f"{mine:,.0f}", f"{mine / bare:.2f}")
    console.print(table)

    limit = Table(title=f"server-enforced limit of {args.rpm:,.0f} RPM, {args.rpm_requests} requests")
    for col in ("client", "achieved RPM", "fraction of limit", "429s", "429s / requests"):
        limit.add_column(col, justify="right")
    for label, rpm in (("distilforge, teacher.rpm set", args.rpm), ("distilforge, no rpm (learns from headers)", None)):
        fake = FakeOpenAI(rpm_limit=args.rpm, default=Behaviour([ANSWER]))
        url = fake.start()
        try:
            run = distilforge_run(url, args.rpm_requests, 64, rpm=rpm)
        finally:
            fake.stop()
        achieved = args.rpm_requests / run["wall_seconds"] * 60
        limit.add_row(label, f"{achieved:,.0f}", f"{achieved / args.rpm:.3f}", str(fake.rejected_429),
                      f"{fake.rejected_429 / len(fake.requests):.2%}")
    console.print(limit)


if __name__ == "__main__":
    main()
