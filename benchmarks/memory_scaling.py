"""Memory of a whole `distilforge run` (generation, filters, dataset) as the number of seeds grows.

Run: .venv/bin/python benchmarks/memory_scaling.py [--seeds 2000 20000 200000]

The fake OpenAI-compatible server runs here (request log off); `distilforge run` runs in a child
process whose resident memory (VmRSS) is sampled every 0.2 s. The table shows RSS when a quarter,
half, three quarters and all of the samples were done, and the peaks over the whole command: VmRSS
(which counts touched pages of memory-mapped Arrow files) and RssAnon (the process's own memory).
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


def rss_mib(pid: int) -> tuple[float, float] | None:
    """(VmRSS, RssAnon) in MiB. VmRSS also counts pages of memory-mapped Arrow files the process has
    touched: page cache the kernel takes back under pressure. RssAnon is the process's own memory."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024
    except (FileNotFoundError, KeyError, ValueError):
        return None


def watch(cmd: list[str], env: dict[str, str] | None = None, every: float = 0.1) -> dict:
    """Run `cmd` as a child, sampling its VmRSS and RssAnon every `every` s. Returns its exit code,
    stdout and stderr, wall seconds from spawn to exit, the samples (seconds, VmRSS MiB), the peaks,
    and the CPU seconds (user, sys) of its whole process tree, from wait4 (children it waited for
    included), with the kernel's own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        samples: list[tuple[float, float]] = []
        anon: list[float] = []
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = rss_mib(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - start, rss[0]))
                anon.append(rss[1])
            time.sleep(every)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "stdout": out.read().decode(), "stderr": err.read().decode(), "wall": wall,
                "samples": samples, "peak": max((r for _, r in samples), default=float("nan")),
                "anon": max(anon, default=float("nan")), "user": usage.ru_utime, "sys": usage.ru_stime,
                "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss / 1024}


def run(n: int, base_url: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        with seeds.open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"question": f"Q{i}: Tom has 3 apples and gets 2 more. How many?",
                                     "answer": "#### 5"}) + "\n")
        config = Path(tmp) / "job.yaml"
        config.write_text(yaml.safe_dump({
            "seeds": {"path": str(seeds)},
            "teacher": {"backend": "openai", "model": "fake", "base_url": base_url, "api_key_env": None,
                        "max_concurrency": 256, "params": {"max_tokens": 64}},
        }))
        out = Path(tmp) / "run"
        # A response cache of its own: the same seeds again would be answered from the shared one.
        env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "DISTILFORGE_RESPONSE_CACHE": f"{tmp}/responses.sqlite"}
        child = watch([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)], env, every=0.2)
        assert child["rc"] == 0, (child["rc"], child["stderr"][-2000:])
        samples = child["samples"]
        summary = json.loads((out / "run.json").read_text())
        assert summary["kept"] == n, summary["kept"]
        wall = summary["wall_seconds"]
        # Map progress to time through the teacher window (first request .. last response).
        t0 = summary["total_seconds"] - wall
        marks = {}
        for frac in (0.25, 0.5, 0.75, 1.0):
            t = t0 + wall * frac
            marks[frac] = max((r for ts, r in samples if ts <= t + 0.2), default=float("nan"))
        return {"n": n, "marks": marks, "peak": child["peak"], "anon": child["anon"], "rate": n / wall,
                "total": child["wall"], "cpu": child["cpu"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2_000, 20_000, 200_000])
    args = parser.parse_args()
    fake = FakeOpenAI(default=Behaviour(["3 + 2 = 5.\nThe answer is 5."]), log_requests=False)
    url = fake.start()
    table = Table(title="run: resident memory (MiB) by progress of the teacher window; peak over the whole command")
    for col in ("seeds", "25%", "50%", "75%", "100%", "peak VmRSS", "peak RssAnon", "requests/s", "total s"):
        table.add_column(col, justify="right")
    try:
        for n in args.seeds:
            r = run(n, url)
            table.add_row(f"{n:,}", *(f"{r['marks'][f]:.0f}" for f in (0.25, 0.5, 0.75, 1.0)),
                          f"{r['peak']:.0f}", f"{r['anon']:.0f}", f"{r['rate']:.0f}", f"{r['total']:.0f}")
    finally:
        fake.stop()
    Console().print(table)


if __name__ == "__main__":
    main()
