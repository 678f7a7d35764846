"""Throughput of the Self-Instruct novelty check (max ROUGE-L of a candidate against the pool).

Run: .venv/bin/python benchmarks/rouge_novelty.py [--pool-sizes 1000 10000] [--candidates 175]

Pool: real instructions and questions from ../shared/data (Alpaca, GSM8K, StrategyQA); candidates:
the 175 Self-Instruct seed instructions. Compares distilforge's NoveltyPool (inverted-index bound +
bit-parallel LCS) with the plain approach (a dynamic-programming LCS against every pool item, as the
reference implementation does with rouge_score), on the same candidates, and checks both agree.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilforge.modes.rouge import NoveltyPool, tokenize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def dp_lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def texts() -> tuple[list[str], list[str]]:
    if not DATA.exists():
        rng = random.Random(0)
        words = [f"w{i}" for i in range(3000)]
        pool = [" ".join(rng.choices(words, k=rng.randint(5, 25))) for _ in range(12000)]
        return pool, pool[:175]
    pool: list[str] = []
    for name, field in (("alpaca/alpaca_data_first2000.jsonl", "instruction"), ("gsm8k/train.jsonl", "question"),
                        ("strategyqa/train.jsonl", "question")):
        pool += [json.loads(line)[field] for line in (DATA / name).read_text().splitlines()]
    seeds = [json.loads(line)["instruction"] for line in (DATA / "self_instruct/seed_tasks.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(pool)
    return pool, seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--candidates", type=int, default=175)
    parser.add_argument("--naive-candidates", type=int, default=20, help="the plain DP is slow: time fewer")
    args = parser.parse_args()
    pool_texts, candidates = texts()
    candidates = candidates[: args.candidates]
    table = Table(title="max ROUGE-L of a candidate against the pool (one core)")
    for col in ("pool", "distilforge cand/s", "exact LCS per cand", "plain DP cand/s", "speed-up", "agree"):
        table.add_column(col, justify="right")
    for size in args.pool_sizes:
        pool = NoveltyPool()
        tokens = [tokenize(t) for t in pool_texts[:size]]
        for t in tokens:
            pool.add(t)
        cand_tokens = [tokenize(c) for c in candidates]
        start = time.perf_counter()
        ours = [pool.max_rouge_l(c)[0] for c in cand_tokens]
        fast = len(cand_tokens) / (time.perf_counter() - start)
        checks = pool.exact_checks / len(cand_tokens)
        few = cand_tokens[: args.naive_candidates]
        start = time.perf_counter()
        naive = [max((2 * dp_lcs(c, t) / (len(c) + len(t)) if c and t else 0.0) for t in tokens) for c in few]
        slow = len(few) / (time.perf_counter() - start)
        agree = all(abs(a - b) < 1e-9 for a, b in zip(ours, naive, strict=False))
        table.add_row(f"{size:,}", f"{fast:,.0f}", f"{checks:,.1f}", f"{slow:,.1f}", f"{fast / slow:,.0f}x",
                      "yes" if agree else "NO")
    Console().print(table)


if __name__ == "__main__":
    main()
