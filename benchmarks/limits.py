"""The five limits of issue 23 in one table: this machine's figures, the target, and a bare SDK loop beside them.

Run: .venv/bin/python benchmarks/limits.py [--quick] [--million] [--skip window cpu startup memory ray]

Every figure is a whole command as a user runs it, in a child process (the fake OpenAI-compatible
server of tests/fake_openai.py answers on loopback, in this process or, for Ray, in its own):
- request window: `distilforge run` and the bare `AsyncOpenAI` loop of teacher_throughput.py against
  a 200 ms teacher at C=256; requests/s over each one's window (first request to last answer, from its
  own clock) as a fraction of the ideal C / latency. 8,000 requests (4,000 with --quick).
- client CPU: user + sys of the child's whole process tree (wait4; children it waited for included)
  divided by the requests, at zero latency, 20,000 requests. Start-up included, as the issue asks;
  the marginal figure (the 20-seed run's CPU taken off) is printed in the details.
- start-up: a 20-seed job, whole process from spawn to exit, against the bare script on the same seeds.
- memory: peak RSS (the kernel's, from wait4) and peak RssAnon (sampled from /proc every 0.1 s) at
  2,000 and 20,000 seeds, and the growth between them; --million adds 1,000,000 seeds (ours only).
- scale-out: `--executor ray:1` against `ray:2` on a latency-bound job (500 ms teacher, 64 in flight per
  rank); and, from the measured CPU per request, the client cores a 1,000 requests/s cluster needs.
Each run gets its own response cache (see teacher_throughput.run_env), so repeats pay and measure.
The machine's load average is printed with the table: on 2 shared cores the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import memory_scaling
import ray_scaling
import teacher_throughput as tt
from fake_openai import Behaviour, FakeOpenAI
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
CONCURRENCY = 256
LATENCY = 0.2
GOALS = {"window": 0.9, "cpu_ms": 0.5, "startup_s": 0.3, "growth_mib": 20.0, "million_mib": 500.0, "ray": 1.8}


def ours(url: str, n: int, folder: Path, *extra: str, every: float = 0.1) -> dict:
    """`distilforge run` on n seeds: the child's figures (see memory_scaling.watch) and its run.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = tt.write_job(folder, url, tt.seeds_file(folder, n), CONCURRENCY)
    child = memory_scaling.watch(tt.run_command(config, folder / "run", *extra), tt.run_env(folder), every)
    assert child["rc"] == 0, child["stderr"][-3000:]
    child["run"] = json.loads((folder / "run" / "run.json").read_text())
    assert child["run"]["kept"] == n, child["run"]["kept"]
    child["window"] = child["run"]["wall_seconds"]
    return child


def bare(url: str, n: int, folder: Path, every: float = 0.1) -> dict:
    """The bare AsyncOpenAI loop on the same seeds, as a command."""
    folder.mkdir(parents=True, exist_ok=True)
    child = memory_scaling.watch(tt.bare_command(url, tt.seeds_file(folder, n), folder, CONCURRENCY),
                                 tt.run_env(folder), every)
    assert child["rc"] == 0, child["stderr"][-3000:]
    child["window"] = json.loads(child["stdout"].strip().splitlines()[-1])["window"]
    return child


def pair(url: str, n: int, repeats: int, every: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Ours and bare, alternated (on shared cores single runs vary); one warm-up of the server first."""
    runs: tuple[list[dict], list[dict]] = ([], [])
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            runs[0].append(ours(url, n, Path(tmp) / f"ours{i}", every=every))
            runs[1].append(bare(url, n, Path(tmp) / f"bare{i}", every=every))
    return runs


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def window(args: argparse.Namespace, rows: list, details: list) -> None:
    fake = FakeOpenAI(latency=(LATENCY, LATENCY), default=Behaviour([tt.ANSWER]), log_requests=False)
    url = fake.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare(url, 1000, Path(tmp))  # warm-up (server, page cache)
        n = args.window_requests
        o, b = pair(url, n, args.repeats)
    finally:
        fake.stop()
    ideal = CONCURRENCY / LATENCY
    ow, bw = n / med(o, "window") / ideal, n / med(b, "window") / ideal
    rows.append(("request window", f"requests/s / (C/latency), C={CONCURRENCY}, {LATENCY * 1000:.0f} ms, {n:,} req",
                 f"{ow:.2f} ({n / med(o, 'window'):,.0f}/s)", f"{bw:.2f} ({n / med(b, 'window'):,.0f}/s)",
                 f">= {GOALS['window']}", ow >= GOALS["window"]))
    details.append(f"window: ours {[round(r['window'], 2) for r in o]} s, bare {[round(r['window'], 2) for r in b]} s; "
                   f"ours whole command {[round(r['wall'], 2) for r in o]} s, bare {[round(r['wall'], 2) for r in b]} s")


def zero_latency(args: argparse.Namespace, rows: list, details: list, facts: dict) -> None:
    """Start-up (20 seeds), client CPU and memory (2k and 20k seeds): one zero-latency server for all."""
    fake = FakeOpenAI(default=Behaviour([tt.ANSWER]), log_requests=False)
    url = fake.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare(url, 1000, Path(tmp))  # warm-up
        small = pair(url, 20, args.startup_repeats, every=0.01) if "startup" in args.parts else None
        sized = {n: pair(url, n, args.repeats) for n in (args.small, args.large)} \
            if {"cpu", "memory"} & set(args.parts) else {}
        million = None
        if args.million and "memory" in args.parts:
            with tempfile.TemporaryDirectory() as tmp:
                million = ours(url, 1_000_000, Path(tmp) / "m", every=0.5)
    finally:
        fake.stop()
    if small is not None:
        o, b = small
        extra = med(o, "wall") - med(b, "wall")
        rows.append(("start-up", "20 seeds, whole process minus the bare script's (s)",
                     f"{extra:+.2f} ({med(o, 'wall'):.2f} s, CPU {med(o, 'cpu'):.2f} s)",
                     f"({med(b, 'wall'):.2f} s, CPU {med(b, 'cpu'):.2f} s)", f"< {GOALS['startup_s']}",
                     extra < GOALS["startup_s"]))
        facts["startup_cpu"] = (med(o, "cpu"), med(b, "cpu"))
        details.append(f"start-up: ours {[round(r['wall'], 2) for r in o]} s, bare {[round(r['wall'], 2) for r in b]} s")
    if sized:
        n = args.large
        o, b = sized[n]
        ms, bms = med(o, "cpu") / n * 1000, med(b, "cpu") / n * 1000
        facts["cpu_ms"], facts["bare_ms"] = ms, bms
        rows.append(("client CPU", f"user+sys of the whole command per request, 0 ms teacher, {n:,} req",
                     f"{ms:.2f} ms", f"{bms:.2f} ms", f"<= {GOALS['cpu_ms']} ms", ms <= GOALS["cpu_ms"]))
        if "startup_cpu" in facts:
            s, bs = facts["startup_cpu"]
            details.append(f"client CPU, marginal (the 20-seed run's CPU taken off): ours "
                           f"{(med(o, 'cpu') - s) / (n - 20) * 1000:.2f} ms, bare {(med(b, 'cpu') - bs) / (n - 20) * 1000:.2f} ms")
        details.append(f"client CPU: ours {[round(r['cpu'], 2) for r in o]} s, bare {[round(r['cpu'], 2) for r in b]} s "
                       f"for {n:,}; at zero latency ours ran {n / med(o, 'window'):,.0f} req/s over its window")
        (os_, bs_), (ol, bl) = sized[args.small], sized[args.large]
        grow, agrow = med(ol, "maxrss") - med(os_, "maxrss"), med(ol, "anon") - med(os_, "anon")
        rows.append(("memory", f"peak RSS growth {args.small:,} -> {args.large:,} seeds (MiB)",
                     f"{grow:+.0f} ({med(os_, 'maxrss'):.0f} -> {med(ol, 'maxrss'):.0f})",
                     f"{med(bl, 'maxrss') - med(bs_, 'maxrss'):+.0f} ({med(bs_, 'maxrss'):.0f} -> {med(bl, 'maxrss'):.0f})",
                     f"< {GOALS['growth_mib']:.0f}", grow < GOALS["growth_mib"]))
        rows.append(("", "peak RssAnon growth (MiB)", f"{agrow:+.0f} ({med(os_, 'anon'):.0f} -> {med(ol, 'anon'):.0f})",
                     f"{med(bl, 'anon') - med(bs_, 'anon'):+.0f} ({med(bs_, 'anon'):.0f} -> {med(bl, 'anon'):.0f})",
                     "(reported)", None))
    if million is not None:
        rows.append(("", "peak RSS at 1,000,000 seeds (MiB)", f"{million['maxrss']:.0f} (RssAnon {million['anon']:.0f})",
                     "-", f"< {GOALS['million_mib']:.0f}", million["maxrss"] < GOALS["million_mib"]))


def scale_out(args: argparse.Namespace, rows: list, details: list, facts: dict) -> None:
    latency, per_rank = 0.5, 64
    server = subprocess.Popen([sys.executable, "-c", ray_scaling.SERVER.format(tests=str(BENCH.parent / "tests"),
                                                                              latency=latency)],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()  # type: ignore[union-attr]
    n, results = args.ray_requests, {}
    try:
        for executor in ("ray:1", "ray:2"):
            with tempfile.TemporaryDirectory() as tmp:
                summary, whole = ray_scaling.run(ray_scaling.job(Path(tmp), url, n, per_rank), Path(tmp) / "run", executor)
            assert summary["kept"] == n, summary["kept"]
            results[executor] = (n / summary["wall_seconds"], summary["executor"]["ranks"], whole)
    finally:
        server.kill()
        server.wait()
    (r1, ranks1, w1), (r2, ranks2, w2) = results["ray:1"], results["ray:2"]
    rows.append(("scale-out", f"Ray 2 ranks / 1 rank, {latency * 1000:.0f} ms teacher, {per_rank} in flight per rank, {n:,} req",
                 f"{r2 / r1:.2f}x ({r1:,.0f} -> {r2:,.0f}/s)", "-", f">= {GOALS['ray']}", r2 / r1 >= GOALS["ray"]))
    rank_ms = sum(r["cpu_seconds"] for r in ranks2) / n * 1000
    use = " / ".join(f"{r['cpu_seconds'] / max(r['seconds'], 1e-9):.0%}" for r in ranks2)
    # A Ray worker's CPU includes Ray's own threads for as long as the rank lives, so on a latency-bound
    # job it is mostly time, not requests: the cluster estimate uses the zero-latency figure (CPU per
    # request when the client is the limit), with the Ray figure beside it.
    rows.append(("", f"Ray rank CPU per request on this latency-bound job (CPU use per rank {use})",
                 f"{rank_ms:.2f} ms", "-", "(reported)", None))
    if "cpu_ms" in facts:
        rows.append(("", f"client cores for 1,000 req/s = 1,000 x CPU per request at zero latency "
                         f"({facts['cpu_ms']:.2f} ms)", f"{facts['cpu_ms']:.2f} cores", f"{facts['bare_ms']:.2f} cores",
                     "(on paper)", None))
    details.append(f"scale-out: ray:1 {r1:,.0f}/s (command {w1:.1f} s, rank CPU "
                   f"{' / '.join(str(r['cpu_seconds']) for r in ranks1)} s), ray:2 {r2:,.0f}/s (command {w2:.1f} s, "
                   f"rank CPU {' / '.join(str(r['cpu_seconds']) for r in ranks2)} s); ideal per rank {per_rank / latency:,.0f}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and one repeat (a few minutes)")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 seeds (ours only; long)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["window", "cpu", "startup", "memory", "ray"])
    args = parser.parse_args()
    args.parts = [p for p in ("window", "startup", "cpu", "memory", "ray") if p not in args.skip]
    args.window_requests = 4000 if args.quick else 8000
    args.repeats = 1 if args.quick else 3
    args.startup_repeats = 3 if args.quick else 5
    args.small, args.large = 2000, 20000
    args.ray_requests = 1500 if args.quick else 3000
    load = os.getloadavg()
    rows: list = []
    details: list[str] = []
    facts: dict = {}
    if "window" in args.parts:
        window(args, rows, details)
    if {"startup", "cpu", "memory"} & set(args.parts):
        zero_latency(args, rows, details, facts)
    if "ray" in args.parts:
        scale_out(args, rows, details, facts)
    table = Table(title=f"distilforge against its limits ({os.cpu_count()} cores; load average "
                        f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
                        f"{'--quick, 1 run each' if args.quick else f'median of {args.repeats}'})")
    for col in ("target", "measure", "distilforge", "bare SDK", "goal", "met"):
        table.add_column(col, justify="left" if col in ("target", "measure") else "right")
    for *cells, met in rows:
        table.add_row(*cells, "-" if met is None else ("yes" if met else "no"))
    console = Console(width=200)
    console.print(table)
    for line in details:
        console.print(f"  {line}", highlight=False)


if __name__ == "__main__":
    main()
