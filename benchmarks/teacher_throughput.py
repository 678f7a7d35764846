"""distilforge against a bare OpenAI SDK loop on the same prompts, as whole commands, and a rate limit.

Run: .venv/bin/python benchmarks/teacher_throughput.py [--requests 4000 40000] [--concurrency 256]
     [--latency 0.2] [--repeats 3]

The fake OpenAI-compatible server (tests/fake_openai.py: aiohttp, real HTTP on loopback) runs in this
process; each contender runs as its own child process, timed from spawn to exit:
- bare: a script with `AsyncOpenAI` (aiohttp transport, pool sized to the concurrency) and a
  semaphore, reading the same seeds file and writing every answer to a JSONL file;
- distilforge: `distilforge run job.yaml` as a user runs it (journal, parse, filters, dataset, card
  and report on disk when it returns).
The table gives both the request window (first request to last answer, from each one's own clock) and
the whole command, and their ratios (bare / distilforge: 1.00 = as fast as the bare loop). A second
table: a rate limit enforced by the server, the fraction distilforge sustains and the 429s it provoked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

ANSWER = "Two plus two is four.\nThe answer is 4."

BARE = '''
import asyncio, json, sys, time
import httpx2, openai

async def main(seeds, out, concurrency):
    client = openai.AsyncOpenAI(api_key="EMPTY", base_url=sys.argv[1], max_retries=0,
        http_client=openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)))
    slots = asyncio.Semaphore(concurrency)
    questions = [json.loads(line)["question"] for line in open(seeds)]
    answers = []
    async def one(text):
        async with slots:
            r = await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": text}],
                                                     max_tokens=64, temperature=0.7)
            answers.append({"question": text, "answer": r.choices[0].message.content})
    start = time.time()
    await asyncio.gather(*(one(q) for q in questions))
    window = time.time() - start
    with open(out, "w") as fh:
        for a in answers:
            fh.write(json.dumps(a) + "\\n")
    await client.close()
    print(json.dumps({"window": window}))

asyncio.run(main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
'''


def seeds_file(folder: Path, n: int) -> Path:
    path = folder / "seeds.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"question": f"Q{i}: what is 2 + 2?", "answer": "#### 4"}) + "\n")
    return path


def bare_command(url: str, seeds: Path, folder: Path, concurrency: int) -> list[str]:
    """The bare SDK loop as a command; it prints {"window": seconds} on its last line."""
    script = folder / "bare.py"
    script.write_text(BARE)
    return [sys.executable, str(script), url, str(seeds), str(folder / "answers.jsonl"), str(concurrency)]


def write_job(folder: Path, url: str, seeds: Path, concurrency: int, rpm: float | None = None) -> Path:
    """job.yaml for `distilforge run`: the seeds against the fake teacher, as a user writes it."""
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump({
        "seeds": {"path": str(seeds)},
        "teacher": {"backend": "openai", "model": "fake", "base_url": url, "api_key_env": None,
                    "max_concurrency": concurrency, "rpm": rpm, "params": {"max_tokens": 64}},
    }))
    return config


def run_env(folder: Path) -> dict[str, str]:
    """Offline, with a response cache of the run's own: repeats of the same seeds would otherwise be
    answered from the shared cache at no cost, and measure nothing."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "DISTILFORGE_RESPONSE_CACHE": str(folder / "responses.sqlite")}


def run_command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out), *extra]


def bare(url: str, seeds: Path, folder: Path, concurrency: int) -> tuple[float, float]:
    command = bare_command(url, seeds, folder, concurrency)
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    whole = time.perf_counter() - start
    return json.loads(out.stdout.strip().splitlines()[-1])["window"], whole


def distilforge(url: str, seeds: Path, folder: Path, concurrency: int, rpm: float | None = None) -> tuple[dict, float]:
    config = write_job(folder, url, seeds, concurrency, rpm)
    out = folder / "run"
    start = time.perf_counter()
    subprocess.run(run_command(config, out), check=True, capture_output=True, env=run_env(folder))
    whole = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    assert (out / "report.html").exists() and (out / "dataset" / "README.md").exists()
    return run, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[4000, 40000])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument("--rpm-requests", type=int, default=1000)
    parser.add_argument("--no-rpm", action="store_true", help="skip the rate-limit table")
    args = parser.parse_args()
    console = Console()

    table = Table(title=f"bare AsyncOpenAI loop vs distilforge run, concurrency {args.concurrency}, "
                        f"{args.latency * 1000:.0f} ms teacher, median of {args.repeats} (separate processes, loopback)")
    for col in ("requests", "bare window s", "ours window s", "window ratio", "bare command s", "ours command s",
                "command ratio", "target"):
        table.add_column(col, justify="right")
    fake = FakeOpenAI(latency=(args.latency, args.latency), default=Behaviour([ANSWER]), log_requests=False)
    url = fake.start()
    try:
        for n in args.requests:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                seeds = seeds_file(folder, n)
                bare(url, seeds, folder, args.concurrency)  # warm-up (page cache, server)
                windows: tuple[list[float], list[float]] = ([], [])
                commands: tuple[list[float], list[float]] = ([], [])
                # Alternate the two and take medians: on 2 shared cores single runs vary.
                for i in range(args.repeats):
                    window, whole = bare(url, seeds, folder, args.concurrency)
                    windows[0].append(window)
                    commands[0].append(whole)
                    (folder / f"d{i}").mkdir()
                    run, whole = distilforge(url, seeds, folder / f"d{i}", args.concurrency)
                    assert run["kept"] == n, run["kept"]
                    windows[1].append(run["wall_seconds"])
                    commands[1].append(whole)
            bw, ow = statistics.median(windows[0]), statistics.median(windows[1])
            bc, oc = statistics.median(commands[0]), statistics.median(commands[1])
            target = 0.85 if n <= 4000 else 0.95
            table.add_row(f"{n:,}", f"{bw:.2f}", f"{ow:.2f}", f"{bw / ow:.2f}", f"{bc:.2f}", f"{oc:.2f}",
                          f"{bc / oc:.2f}", f">= {target}")
    finally:
        fake.stop()
    console.print(table)
    if args.no_rpm:
        return

    limit = Table(title=f"server-enforced limit of {args.rpm:,.0f} RPM, {args.rpm_requests} requests")
    for col in ("client", "achieved RPM", "fraction of limit", "429s", "429s / requests"):
        limit.add_column(col, justify="right")
    for label, rpm in (("distilforge, teacher.rpm set", args.rpm), ("distilforge, no rpm (learns from headers)", None)):
        fake = FakeOpenAI(rpm_limit=args.rpm, default=Behaviour([ANSWER]), log_requests=False)
        url = fake.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                run, _ = distilforge(url, seeds_file(Path(tmp), args.rpm_requests), Path(tmp), 64, rpm=rpm)
        finally:
            fake.stop()
        achieved = args.rpm_requests / run["wall_seconds"] * 60
        limit.add_row(label, f"{achieved:,.0f}", f"{achieved / args.rpm:.3f}", str(fake.rejected_429),
                      f"{fake.rejected_429 / fake.chat_requests:.2%}")
    console.print(limit)


if __name__ == "__main__":
    main()
