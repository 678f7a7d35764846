"""Does the student learn, and what do filters, diverse reasoning and targeted rounds add? Measured on the student.

Run: .venv/bin/python benchmarks/outcome_cpu.py --task all [--quick] [--markdown docs/outcome.md --json docs/outcome.json]
     .venv/bin/python benchmarks/outcome_cpu.py --task all --quick --conditions all  (every condition, 120/60)
     .venv/bin/python benchmarks/outcome_cpu.py --merge A.json B.json ... --markdown docs/outcome.md  (runs made apart)

Tasks are Fine-tune-CoT's symbolic tasks (Ho et al. 2023), generated from a seed (benchmarks/symbolic.py):
last-letter concatenation (4 names), coin flip (4 people) and tracking shuffled objects (3 people, 3 swaps, the
gold a bare letter). The default size is the issue's: 350 training and 150 held-out questions per task;
`--quick` uses 120 and 60.

THE TEACHER IS CONTROLLED, NOT A MODEL: a fake OpenAI-compatible server on loopback (its own process) that writes
step-by-step rationales and is right `--teacher-accuracy` of the time (default 0.6); a wrong rationale makes
one wrong step and carries it into its answer. Everything else is the real pipeline: one `distilforge run` per
condition, with the product's default `train:` (only `enabled: true`) and an `eval:` with only its files, the
filters' own parser and grading, and the same held-out questions for every condition:

- base: the student before training;
- filters off: no gold answers and no `filters:` (only the format checks), so wrong rationales are trained on;
- filters on: gold answers (wrong_answer) and the `length` and `consistency` filters;
- filters on, k=4: four rationales per question instead of two (diverse reasoning, twice the spend);
- rounds: filters on, one targeted round (a probe split held apart steers new samples to the student's mistakes);
- one pass at the rounds' spend: filters on, as many samples per question as buys the rounds' teacher spend.

Each row has accuracy with a 95% bootstrap interval and how many of the student's answers the parser could read;
each comparison is a paired difference (the same questions) with a paired bootstrap 95% interval.
`--train-set KEY=VALUE` overrides a `train:` key for every condition (to measure other settings);
`--conditions` runs only some conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import symbolic

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
PRICES = {"input_per_million": 1.0, "output_per_million": 1.0}
CONDITIONS = ("filters off", "filters on", "filters on, k=4", "rounds", "one pass, equal spend")
SERVER = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from fake_openai import Behaviour, FakeOpenAI
script = {{key: Behaviour(answers) for key, answers in json.load(open({script!r})).items()}}
server = FakeOpenAI(script=script, log_requests=False)
print(server.start(), flush=True)
parent = os.getppid()
while os.getppid() == parent:  # a benchmark killed without its cleanup leaves no teacher behind
    time.sleep(1)
"""


def start_teacher(folder: Path, task: str, rows: list[symbolic.Item], accuracy: float,
                  samples: int = 12) -> tuple[subprocess.Popen[str], str]:
    """The controlled teacher for these questions, in its own process; returns it and its base URL."""
    script = {r.question: [symbolic.teacher_answer(task, r, s, accuracy) for s in range(samples)] for r in rows}
    (folder / "script.json").write_text(json.dumps(script))
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=TESTS, script=str(folder / "script.json"))],
                              stdout=subprocess.PIPE, text=True)
    return server, server.stdout.readline().strip()  # type: ignore[union-attr]


def write_job(folder: Path, url: str, seeds: Path, eval_file: Path, *, gold: bool, filters: bool, samples: int,
              train: dict[str, Any], evaluation: dict[str, Any], loop: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {
        "name": folder.name,
        "seeds": {"path": str(seeds), "fields": {"question": "question", "answer": "answer" if gold else None,
                                                  "id": "id"}},
        "teacher": {"backend": "openai", "model": "controlled-teacher", "base_url": url, "api_key_env": None,
                    "max_concurrency": 64, "params": {"temperature": 0.7, "max_tokens": 256},
                    # Off, so that 'equal spend' compares real spend: with the shared response cache on, a later
                    # condition's repeated prompts were served free and its spend read as near 0.
                    "cache": False},
        "generation": {"mode": "cot", "samples_per_seed": samples},
        "budget": {"prices": PRICES},
        "train": {"enabled": True, **train},
        # Only the held-out file is scored (not also each run's own validation split), so every condition is
        # scored on the same questions and the base student's score is computed once.
        "eval": {"files": [{"path": str(eval_file), "name": "heldout"}], "include_validation": False, **evaluation},
    }
    if filters:
        data["filters"] = [{"name": "length", "min_words": 5}, {"name": "consistency"}]
    if loop:
        data["loop"] = loop
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(config: Path, out: Path, base: Path | None = None) -> dict[str, Any]:
    """One `distilforge run`. `base`: an earlier run folder on the same eval questions whose scores of the base
    student are copied in, so that this run does not score the same untrained model again (run.json's `eval.before`
    is what `distilforge eval` reuses when it covers the same questions)."""
    started, cpu = time.perf_counter(), _children_cpu()
    if base is not None:
        (out / "eval").mkdir(parents=True)
        (out / "eval" / "before.jsonl").write_text((base / "eval" / "before.jsonl").read_text())
        before = json.loads((base / "run.json").read_text())["eval"]["before"]
        (out / "run.json").write_text(json.dumps({"eval": {"before": before}}))
    # The run's progress lines (training steps, eval batches) go to a file beside it: `tail -f` shows where
    # the time goes while it runs.
    with open(out.parent / "run.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=log)
    if done.returncode != 0:
        tail = (out.parent / "run.log").read_text()[-2000:]
        raise RuntimeError(f"distilforge run exited {done.returncode}: {tail}")
    summary = json.loads((out / "run.json").read_text())
    summary["_seconds"] = time.perf_counter() - started
    # CPU time is what a shared machine does not distort: on an idle machine the wall time is about this
    # divided by the cores torch can use.
    summary["_cpu_seconds"] = _children_cpu() - cpu
    for label in ("before", "after"):
        rows = [json.loads(line) for line in (out / "eval" / f"{label}.jsonl").read_text().splitlines()] \
            if (out / "eval" / f"{label}.jsonl").exists() else []
        rows = [r for r in rows if r["set"] == "heldout"]
        summary[f"_{label}"] = [bool(r["correct"]) for r in rows]
        summary[f"_{label}_parsed"] = [r["answer"] is not None for r in rows]
    if not summary["_after"]:  # nothing kept, so nothing trained: this condition's student is the base one
        summary["_after"], summary["_after_parsed"] = summary["_before"], summary["_before_parsed"]
        summary["_untrained"] = True
    return summary


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def paired(a: list[bool], b: list[bool], resamples: int = 2000) -> tuple[float, float, float]:
    """b - a on the same questions, with a paired bootstrap 95% interval."""
    rng = random.Random(0)
    n = len(a)
    diffs = sorted(sum(b[i] - a[i] for i in (rng.randrange(n) for _ in range(n))) / n for _ in range(resamples))
    return (sum(b) - sum(a)) / n, diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def interval(correct: list[bool], resamples: int = 2000) -> tuple[float, float, float]:
    rng = random.Random(0)
    n = len(correct)
    values = sorted(sum(rng.choices(correct, k=n)) / n for _ in range(resamples))
    return sum(correct) / n, values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def run_task(task: str, args: argparse.Namespace, train: dict[str, Any], log: Any,
             partial: Any = None) -> dict[str, Any]:
    """Every condition on one task; returns its rows and paired comparisons (`partial` gets them so far after
    each condition, so that an interrupted benchmark keeps what it measured)."""
    evals = symbolic.items(task, args.eval, seed=1)
    rows = symbolic.items(task, args.train, seed=0, avoid={e.question for e in evals})
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seeds = folder / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"id": f"T{i:05d}", "question": r.question, "answer": r.gold}) + "\n"
                                 for i, r in enumerate(rows)))
        eval_file = folder / "eval.jsonl"
        eval_file.write_text("".join(json.dumps({"question": r.question, "answer": r.gold}) + "\n" for r in evals))
        server, url = start_teacher(folder, task, rows, args.teacher_accuracy)
        base: Path | None = None
        try:
            plan: list[tuple[str, dict[str, Any]]] = [
                ("filters off", {"gold": False, "filters": False, "samples": args.samples}),
                ("filters on", {"gold": True, "filters": True, "samples": args.samples}),
                ("filters on, k=4", {"gold": True, "filters": True, "samples": 4}),
                ("rounds", {"gold": True, "filters": True, "samples": args.samples,
                            "loop": {"rounds": 1, "probe_fraction": 0.15, "neighbours": 4, "samples": 2}}),
            ]
            for name, options in plan:
                if name not in args.conditions:
                    continue
                out = folder / name.replace(" ", "-").replace(",", "").replace("=", "")
                out.mkdir()
                results[name] = run(write_job(out, url, seeds, eval_file, train=train, evaluation=args.eval_overrides,
                                              **options), out / "run", base)
                base = base or out / "run"
                log(f"{task}: {name}: {results[name]['_seconds'] / 60:.1f} min")
                if partial is not None:
                    partial(summarise(task, results, args, time.perf_counter() - started))
            if "one pass, equal spend" in args.conditions and "rounds" in results:
                # One pass at the spend of the rounds (run.json's cost_usd is the whole run's, every round
                # included): as many samples per question as buys the same teacher spend as filters on did.
                def launch(samples: int) -> dict[str, Any]:
                    out = folder / "one-pass"
                    out.mkdir()
                    return run(write_job(out, url, seeds, eval_file, gold=True, filters=True, samples=samples,
                                         train=train, evaluation=args.eval_overrides), out / "run", base)

                results["one pass, equal spend"] = one_pass(results, args, log, task, launch)
        finally:
            server.kill()
            server.wait()
    return summarise(task, results, args, time.perf_counter() - started)


def one_pass(results: dict[str, dict[str, Any]], args: argparse.Namespace, log: Any, task: str,
             launch: Any) -> dict[str, Any]:
    """One pass at the rounds' spend (run.json's cost_usd is the whole run's, every round included): as many
    samples per question as buys the same teacher spend as filters on did. When that rounds to the samples filters
    on already used, its run is that one pass, and is not trained again (its spend is in the table beside the
    rounds')."""
    reference = results.get("filters on") or results["rounds"]
    ratio = results["rounds"]["cost_usd"] / max(1e-9, reference["cost_usd"])
    samples = max(1, round(args.samples * ratio))
    if samples == args.samples and "filters on" in results:
        log(f"{task}: one pass at the rounds' spend is filters on ({samples} samples, spend ratio {ratio:.2f})")
        return {**results["filters on"], "_samples": samples, "_reused": True}
    started = time.perf_counter()
    summary = launch(samples)
    summary["_samples"] = samples
    log(f"{task}: one pass ({samples} samples): {(time.perf_counter() - started) / 60:.1f} min")
    return summary


def summarise(task: str, results: dict[str, dict[str, Any]], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    first = next(iter(results.values()))
    base = first["_before"]
    rows = [{"condition": "base (before training)", **_acc(base), "parsed": _share(first["_before_parsed"]),
             "kept": None, "spend_usd": None, "minutes": None, "vs_base": None}]
    for name, summary in results.items():
        label = name if name != "one pass, equal spend" else (
            f"one pass, k={summary['_samples']} (rounds' spend)" + (" = filters on" if summary.get("_reused") else ""))
        label += " (nothing kept: not trained)" if summary.get("_untrained") else ""
        rows.append({"condition": label, **_acc(summary["_after"]), "parsed": _share(summary["_after_parsed"]),
                     "kept": summary.get("kept"), "spend_usd": round(summary["cost_usd"], 6),
                     "minutes": round(summary["_seconds"] / 60, 1),
                     "cpu_minutes": round(summary["_cpu_seconds"] / 60, 1), "vs_base": _diff(base, summary["_after"]),
                     "train_loss": (summary.get("train") or {}).get("train_loss")})
    pairs = []
    for a, b in [("filters off", "filters on"), ("filters on", "filters on, k=4"), ("one pass, equal spend", "rounds")]:
        if a in results and b in results:
            pairs.append({"comparison": f"{b} minus {a}", **_diff(results[a]["_after"], results[b]["_after"])})
    return {"task": task, "train": args.train, "eval": args.eval, "teacher_accuracy": args.teacher_accuracy,
            "rows": rows, "pairs": pairs, "minutes": round(seconds / 60, 1)}


def _acc(correct: list[bool]) -> dict[str, Any]:
    acc, low, high = interval(correct)
    return {"accuracy": round(acc, 4), "ci95": [round(low, 4), round(high, 4)], "n": len(correct)}


def _diff(a: list[bool], b: list[bool]) -> dict[str, Any]:
    diff, low, high = paired(a, b)
    return {"difference": round(diff, 4), "ci95": [round(low, 4), round(high, 4)]}


def _share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown: one table of rows and one of paired differences per task."""
    overrides = report.get("overrides")
    if overrides is None:
        train = report.get("train_overrides") or {}
        overrides = f" with {', '.join(f'{k}: {v}' for k, v in train.items())}" if train else ""
    out = [f"## Outcome: {', '.join(t['task'] for t in report['tasks'])}", "",
           f"Produced by `{report.get('command', 'python benchmarks/outcome_cpu.py')}`.", "",
           f"Student: SmolLM2-135M-Instruct with the product's default `train:`{overrides}; teacher: **controlled** (a fake "
           f"OpenAI-compatible server right {report['teacher_accuracy']:.0%} of the time, wrong answers carried from a "
           f"wrong step; not a model). {report['machine']}", ""]
    for task in report["tasks"]:
        out += [f"### {task['task']}: {task['train']} training questions, {task['eval']} held out, "
                f"{task['minutes']} min", "",
                "| condition | accuracy (95% CI) | answers parsed | kept | teacher spend | vs base, paired (95% CI) "
                "| min (CPU min) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in task["rows"]:
            flag = " (most answers unparsed)" if r["parsed"] < 0.5 else ""
            kept = "-" if r["kept"] is None else r["kept"]
            spend = "-" if r["spend_usd"] is None else f"${r['spend_usd']:.4f}"
            minutes = "-" if r["minutes"] is None else r["minutes"]
            if r.get("cpu_minutes") is not None:
                minutes = f"{minutes} ({r['cpu_minutes']})"
            out.append(f"| {r['condition']} | {_pct(r)} | {r['parsed']:.0%}{flag} | {kept} | {spend} "
                       f"| {_dpct(r['vs_base'])} | {minutes} |")
        if task["pairs"]:  # one condition alone has only its gain over the base, in the table above
            out += ["", "| paired difference | points (95% CI) |", "| --- | --- |"]
            out += [f"| {p['comparison']} | {_dpct(p)} |" for p in task["pairs"]]
        out.append("")
    return "\n".join(out)


def _pct(r: dict[str, Any]) -> str:
    return f"{r['accuracy']:.1%} ({r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}, n={r['n']})"


def _dpct(d: dict[str, Any] | None) -> str:
    return "-" if not d else f"{d['difference'] * 100:+.1f} ({d['ci95'][0] * 100:+.1f} to {d['ci95'][1] * 100:+.1f})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", choices=[*symbolic.TASKS, "all"])
    parser.add_argument("--train", type=int, default=None, help="training questions (default 350; --quick 120)")
    parser.add_argument("--eval", type=int, default=None, help="held-out questions (default 150; --quick 60)")
    parser.add_argument("--samples", type=int, default=2, help="teacher samples per question")
    parser.add_argument("--teacher-accuracy", type=float, default=0.6)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer conditions (under 10 min a task)")
    parser.add_argument("--conditions", default=None, help=f"'all', or separated by |, from: {' | '.join(CONDITIONS)}")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train: key (YAML value), e.g. --train-set epochs=3")
    parser.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                        help="set an eval: key (YAML value), e.g. --eval-set batch_size=64 on a GPU")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.train = args.train or (120 if args.quick else 350)
    args.eval = args.eval or (60 if args.quick else 150)
    default = ("filters off", "filters on") if args.quick else CONDITIONS
    if args.conditions == "all":
        args.conditions = "|".join(CONDITIONS)
    args.conditions = [c.strip() for c in args.conditions.split("|")] if args.conditions else list(default)
    unknown = [c for c in args.conditions if c not in CONDITIONS]
    if unknown:
        parser.error(f"unknown conditions {unknown}; use '|' between names from {CONDITIONS}")
    return args


def merge(paths: list[Path], markdown_path: Path | None) -> None:
    """One Markdown report from several runs' --json files (tasks measured in separate runs, one after another)."""
    reports = [json.loads(p.read_text()) for p in paths]
    for report in reports:
        text = markdown(report)
        print(text)
    if markdown_path:
        markdown_path.write_text("\n\n".join(markdown(r) + f"\nWhole run: {r['minutes']} min.\n" for r in reports))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--merge":
        paths = [Path(a) for a in sys.argv[2:] if not a.startswith("--")]
        target = next((Path(b) for a, b in zip(sys.argv, sys.argv[1:], strict=False) if a == "--markdown"), None)
        merge([p for p in paths if p != target], target)
        return {}
    args = parse_args(argv)
    train = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.train_set)}
    args.eval_overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.eval_set)}
    tasks = symbolic.TASKS if args.task == "all" else (args.task,)
    started = time.perf_counter()
    command = "python benchmarks/outcome_cpu.py " + " ".join(
        f"'{a}'" if " " in a or "|" in a else a for a in (argv if argv is not None else sys.argv[1:]))
    overrides = f" with {', '.join(f'{k}: {v}' for k, v in train.items())}" if train else ""
    report: dict[str, Any] = {"teacher_accuracy": args.teacher_accuracy, "train_overrides": train, "tasks": [],
                              "command": command, "overrides": overrides,
                              "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the start "
                                         "(a shared machine is slower; accuracy does not depend on it)"}

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    for task in tasks:
        def partial(summary: dict[str, Any]) -> None:  # so far, written after each condition
            if args.json:
                args.json.write_text(json.dumps({**report, "tasks": [*report["tasks"], summary], "partial": True},
                                                indent=1))

        report["tasks"].append(run_task(task, args, train, log, partial))
    report["minutes"] = round((time.perf_counter() - started) / 60, 1)
    text = markdown(report) + f"\nWhole benchmark: {report['minutes']} min.\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
