"""MinHash near-duplicate removal and 13-gram decontamination at scale: records/s and peak memory.

Run: .venv/bin/python benchmarks/filters.py [--sizes 100000 1000000]

Records are synthetic rationales built from GSM8K solutions (../shared/data, or generated text when
absent) with numbers and words varied, 5% planted near-duplicates and 1% planted test-set questions.
Each filter runs in a child process (so peak RSS is its own) over the records in seed order.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def corpus() -> tuple[list[str], list[str]]:
    if DATA.exists():
        train = [json.loads(x) for x in (DATA / "gsm8k/train.jsonl").read_text().splitlines()]
        test = [json.loads(x)["question"] for x in (DATA / "gsm8k/test.jsonl").read_text().splitlines()]
        return [r["question"] + " " + r["answer"].replace("<<", " ").replace(">>", " ") for r in train], test
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    make = lambda k: " ".join(rng.choices(words, k=k))  # noqa: E731
    return [make(80) for _ in range(7000)], [make(40) for _ in range(1300)]


def records(n: int):
    base, test = corpus()
    rng = random.Random(1)
    for i in range(n):
        roll = rng.random()
        if roll < 0.01:
            text = rng.choice(test) + " so the answer is 5."
        else:
            words = rng.choice(base).split()
            if roll > 0.05:  # distinct: vary numbers and a stretch of words
                words = [str(rng.randint(0, 999)) if w.isdigit() else w for w in words]
                cut = rng.randint(0, max(0, len(words) - 8))
                words[cut : cut + 8] = [f"x{rng.randint(0, 10**6)}" for _ in range(8)]
            text = " ".join(words)
        yield {"seed_id": f"{i:08d}", "sample_index": 0, "question": text[:200], "rationale": text, "text": text}


def child(kind: str, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    from distilforge.schemas import DecontaminateSpec, MinhashFilterSpec
    from distilforge.schemas.records import Record

    rows = records(n)
    start = time.perf_counter()
    rejected = 0
    if kind == "minhash":
        from distilforge.quality.dedup import MinhashDedup

        f = MinhashDedup(MinhashFilterSpec(name="minhash"))
        for row in rows:
            rejected += f.check_row(row) is not None
    else:
        from distilforge.quality.decontaminate import Decontaminate

        source = str(DATA / "gsm8k/test.jsonl")
        f = Decontaminate(DecontaminateSpec(name="decontaminate", eval_sets=[source]))
        for row in rows:
            r = Record(seed_id=row["seed_id"], sample_index=0, question=row["question"], gold=None, answer_type="text",
                       prompt=[], teacher_model="t", text=row["text"], rationale=row["rationale"])
            rejected += f.check(r) is not None
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rejected": rejected, "peak_mib": peak}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    table = Table(title="quality filters over N records (one core, child process each)")
    for col in ("filter", "records", "records/s", "rejected", "peak RSS MiB", "seconds"):
        table.add_column(col, justify="right")
    for kind in ("minhash", "decontaminate"):
        if kind == "decontaminate" and not DATA.exists():
            continue
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            table.add_row(kind, f"{n:,}", f"{n / r['seconds']:,.0f}", f"{r['rejected']:,}", f"{r['peak_mib']:,.0f}",
                          f"{r['seconds']:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
