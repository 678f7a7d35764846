"""What filtering and targeted rounds buy, measured on the student: a whole distillation on 2 CPU cores.

Run: .venv/bin/python benchmarks/outcome_cpu.py [--train 160] [--eval 80] [--corrupt 0.5] [--rounds 1] [--gpu]
(the defaults take about 28 minutes on 2 CPU cores)

The teacher is a fake OpenAI-compatible server on loopback (its own process) that answers GSM8K
questions with their human-written rationales (../shared/data/gsm8k), ending "The answer is X.", and
corrupts a set fraction of its answers: a wrong final answer (the steps stay, the number changes), a
truncated answer, or no answer at all. The task is one- and two-step GSM8K problems (at most two
calculator steps), which the embedded SmolLM2-135M-Instruct student can learn something of in minutes.
Everything else is the real pipeline, one `distilforge run` per condition, the student trained the same
way each time (LoRA, one epoch) and scored on the same held-out GSM8K test questions:

- base: the student before training;
- filters off: no gold answers given and no `filters:` (only the format checks: truncated, empty,
  refusal, unparseable) - wrong answers are trained on;
- filters on: gold answers (wrong_answer) and the `length` and `consistency` filters;
- one pass at equal spend vs targeted rounds: filters on; rounds hold a probe split apart and spend on
  the seeds nearest the student's mistakes; the one-pass run asks for as many samples per seed as
  makes the same teacher spend.

Accuracy comes with a 95% bootstrap interval; differences are paired (the same questions) with a
paired bootstrap interval. `--gpu` makes a larger run (more data, a longer schedule) for a GPU machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
TESTS = str(Path(__file__).resolve().parents[1] / "tests")
PRICES = {"input_per_million": 1.0, "output_per_million": 1.0}

SERVER = """
import json, sys, time
sys.path.insert(0, {tests!r})
from fake_openai import Behaviour, FakeOpenAI
script = {{key: Behaviour(answers) for key, answers in json.load(open({script!r})).items()}}
server = FakeOpenAI(script=script, log_requests=False)
print(server.start(), flush=True)
while True:
    time.sleep(1)
"""


def steps(row: dict[str, Any]) -> int:
    return row["answer"].count("<<")


def rationale(row: dict[str, Any]) -> tuple[str, str]:
    body, final = row["answer"].rsplit("####", 1)
    body = body.replace("<<", "").replace(">>", " ")
    for mark in [m for m in body.split() if "=" in m]:  # "48/2=24 24" -> keep the readable "24"
        body = body.replace(mark, "", 1) if mark.count("=") == 1 and mark.split("=")[1].isdigit() else body
    return " ".join(body.split()), final.strip()


def corrupted(row: dict[str, Any], sample: int, fraction: float) -> list[str]:
    """The teacher's answer to a question's sample: right, or corrupted one of three ways."""
    text, gold = rationale(row)
    draw = random.Random(int(hashlib.sha256(f"{row['question']}:{sample}".encode()).hexdigest()[:12], 16))
    kind = draw.random()
    if kind >= fraction:
        return [f"{text}\nThe answer is {gold}."]
    which = draw.randrange(3)
    if which == 0:  # a wrong final answer after the same steps
        wrong = str(int(float(gold.replace(",", ""))) + draw.choice([-3, -2, -1, 1, 2, 3, 10])) \
            if gold.replace(",", "").replace(".", "").lstrip("-").isdigit() else gold + "0"
        return [f"{text}\nThe answer is {wrong}."]
    if which == 1:  # cut off: the server stops at max_tokens (a word is a token in the fake)
        return [" ".join(text.split()[: max(3, len(text.split()) // 2)]) + " " + "so " * 200]
    return [text]  # no stated answer


def load(name: str, n: int, offset: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (SHARED / name).read_text().splitlines()]
    easy = [r for r in rows if 1 <= steps(r) <= 2]
    return easy[offset : offset + n]


def write_job(folder: Path, url: str, seeds: Path, eval_file: Path, *, gold: bool, filters: bool, samples: int,
              train: dict[str, Any], loop: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {
        "name": folder.name,
        "seeds": {"path": str(seeds), "fields": {"question": "question", "answer": "answer" if gold else None,
                                                  "id": "id"}},
        "teacher": {"backend": "openai", "model": "fake-teacher", "base_url": url, "api_key_env": None,
                    "max_concurrency": 64, "params": {"temperature": 0.7, "max_tokens": 160}},
        "generation": {"mode": "cot", "samples_per_seed": samples, "answer_type": "number"},
        "budget": {"prices": PRICES},
        "train": {"enabled": True, **train},
        "eval": {"files": [{"path": str(eval_file), "name": "gsm8k"}], "max_tokens": 160, "batch_size": 16,
                 "include_validation": False},
        "output": {"validation_fraction": 0.0},
    }
    if filters:
        data["filters"] = [{"name": "length", "min_words": 5, "max_words": 400}, {"name": "consistency"}]
    if loop:
        data["loop"] = loop
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(config: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    summary = json.loads((out / "run.json").read_text())
    summary["_seconds"] = time.perf_counter() - started
    return summary


def paired(a: list[bool], b: list[bool], resamples: int = 2000) -> tuple[float, float, float]:
    """b - a on the same questions, with a paired bootstrap 95% interval."""
    rng = random.Random(0)
    n = len(a)
    diffs = sorted(sum(b[i] - a[i] for i in (rng.randrange(n) for _ in range(n))) / n for _ in range(resamples))
    return (sum(b) - sum(a)) / n, diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def per_question(run_dir: Path, label: str, field: str = "correct") -> list[Any]:
    """Each eval question's `field`, in eval-file order (`distilforge eval` writes RUN_DIR/eval/LABEL.jsonl)."""
    path = run_dir / "eval" / f"{label}.jsonl"
    return [json.loads(line)[field] for line in path.read_text().splitlines()] if path.exists() else []


def stated(answers: list[Any]) -> str:
    """How often the student stated an answer the parser could read (right or wrong)."""
    return f"{sum(a is not None for a in answers) / len(answers):.0%}" if answers else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=160, help="training questions (1-2 step GSM8K train)")
    parser.add_argument("--eval", type=int, default=80, help="held-out questions (1-2 step GSM8K test)")
    parser.add_argument("--corrupt", type=float, default=0.5, help="fraction of teacher answers corrupted")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="a larger run for a GPU machine")
    args = parser.parse_args()
    if args.gpu:
        args.train, args.eval = max(args.train, 2000), max(args.eval, 400)
    train = {"method": "lora", "epochs": 2 if args.gpu else 1, "learning_rate": 5e-4, "batch_size": 8,
             "max_length": 384, "lora": {"r": 16, "alpha": 32}}
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = load("train.jsonl", args.train)
        evals = load("test.jsonl", args.eval)
        seeds = folder / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"id": f"T{i:05d}", "question": r["question"], "answer": r["answer"]}) + "\n"
                                 for i, r in enumerate(rows)))
        eval_file = folder / "eval.jsonl"
        eval_file.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in evals))
        samples_cap = 8
        script = {r["question"][:80]: [corrupted(r, s, args.corrupt)[0] for s in range(samples_cap)] for r in rows}
        (folder / "script.json").write_text(json.dumps(script))
        server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=TESTS, script=str(folder / "script.json"))],
                                  stdout=subprocess.PIPE, text=True)
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        results: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        try:
            conditions: list[tuple[str, dict[str, Any]]] = [
                ("filters off", {"gold": False, "filters": False, "samples": 1}),
                ("filters on", {"gold": True, "filters": True, "samples": 1}),
                ("rounds", {"gold": True, "filters": True, "samples": 1,
                            "loop": {"rounds": args.rounds, "probe_fraction": 0.15, "neighbours": 4, "samples": 2}}),
            ]
            for name, options in conditions:
                out = folder / name.replace(" ", "-")
                out.mkdir()
                config = write_job(out, url, seeds, eval_file, train=train, **options)
                results[name] = run(config, out / "run")
                results[name]["_correct"] = per_question(out / "run", "after")
                results[name]["_stated"] = stated(per_question(out / "run", "after", "answer"))
                results.setdefault("_base", {"_correct": per_question(out / "run", "before"),
                                             "_stated": stated(per_question(out / "run", "before", "answer"))})
                console.print(f"[dim]{name}: {results[name]['_seconds']:.0f} s[/dim]")
            # One pass at the spend of the rounds: as many samples per seed as buys the same teacher tokens.
            # run.json's cost_usd is the whole run's, every round included.
            ratio = results["rounds"]["cost_usd"] / max(1e-9, results["filters on"]["cost_usd"])
            samples = max(1, round(ratio))
            out = folder / "one-pass"
            out.mkdir()
            config = write_job(out, url, seeds, eval_file, gold=True, filters=True, samples=samples, train=train)
            results[f"one pass, {samples} samples"] = run(config, out / "run")
            results[f"one pass, {samples} samples"]["_correct"] = per_question(out / "run", "after")
            results[f"one pass, {samples} samples"]["_stated"] = stated(per_question(out / "run", "after", "answer"))
        finally:
            server.kill()
            server.wait()
        total = time.perf_counter() - started

    table = Table(title=f"SmolLM2-135M student on {args.eval} held-out 1-2 step GSM8K questions; teacher answers "
                        f"{args.corrupt:.0%} corrupted; {args.train} training questions")
    for col in ("condition", "kept", "teacher spend", "answer stated", "accuracy (95% CI)", "vs base, paired (95% CI)",
                "minutes"):
        table.add_column(col, justify="right")
    base_run = results.pop("_base")
    base_correct = base_run["_correct"]
    base = next(iter(results.values()))["eval"]["before"]
    table.add_row("base (before training)", "-", "-", base_run["_stated"], _acc(base), "-", "-")
    for name, summary in results.items():
        after = summary["eval"]["after"]
        spend = summary["cost_usd"]
        diff, low, high = paired(base_correct, summary["_correct"])
        table.add_row(name, str(summary["kept"]), f"${spend:.4f}", summary["_stated"], _acc(after), f"{diff:+.1%} ({low:+.0%} to {high:+.0%})",
                      f"{summary['_seconds'] / 60:.1f}")
    console.print(table)
    pairs = Table(title="paired differences (the same questions)")
    for col in ("comparison", "difference (95% CI)"):
        pairs.add_column(col, justify="right")
    names = list(results)
    for a, b in [("filters off", "filters on"), (names[-1], "rounds")]:
        diff, low, high = paired(results[a]["_correct"], results[b]["_correct"])
        pairs.add_row(f"{b} minus {a}", f"{diff:+.1%} ({low:+.1%} to {high:+.1%})")
    console.print(pairs)
    rounds = results["rounds"].get("rounds") or []
    if rounds:
        detail = Table(title="targeted rounds, per round")
        for col in ("round", "new records", "cost", "probe accuracy (95% CI)", "eval accuracy (95% CI)"):
            detail.add_column(col, justify="right")
        for entry in rounds:
            detail.add_row(str(entry["round"]), str(entry["new_records"]), f"${entry.get('cost_usd') or 0:.4f}",
                           _acc(entry["probe"]), _acc(entry.get("eval")))
        console.print(detail)
        console.print(f"rounds stopped: {results['rounds'].get('rounds_stopped', 'after the last round')}")
    console.print(f"whole benchmark: {total / 60:.1f} minutes")


def _acc(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    low, high = block["ci95"]
    return f"{block['accuracy']:.1%} ({low:.0%}-{high:.0%}, n={block['n']})"


if __name__ == "__main__":
    if not SHARED.exists():
        sys.exit(f"{SHARED}: GSM8K is read from the shared data folder beside the repository")
    main()
