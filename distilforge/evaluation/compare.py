"""Several evaluated runs side by side: accuracy before/after per eval set, and each run's after-training
accuracy minus the first run's, with a 95% interval.

Runs are comparable when they were scored on the same questions: the same eval sets with the same
sizes (and, where RUN_DIR/eval/after.jsonl is there, the same question ids in the same order). The
difference is then paired: a bootstrap over questions of (B right - A right). Runs evaluated before
per-question results were kept fall back to Newcombe's two-proportion interval (Wilson score limits).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from distilforge.core.run_files import read_run

RESAMPLES = 2000
Z95 = 1.959964


class CompareError(ValueError):
    """Runs that cannot be compared (no eval yet, different questions); the message says why."""


def _per_question(run_dir: Path, label: str) -> list[tuple[str, bool]] | None:
    """Each question's (seed_id, correct) in eval order, from RUN_DIR/eval/LABEL.jsonl (written by eval)."""
    path = run_dir / "eval" / f"{label}.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(str(r["seed_id"]), bool(r["correct"])) for r in rows]


def _sets(ev: dict[str, Any]) -> dict[str, int]:
    block = ev.get("after") or ev.get("before") or {}
    return {name: s["n"] for name, s in (block.get("sets") or {}).items()}


def _describe(sets: dict[str, int]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in sets.items()) or "no questions"


def load_evaluated(run_dir: Path) -> dict[str, Any]:
    """One run's facts for the comparison; CompareError if it is not a run or has no eval yet."""
    if not (run_dir / "run.json").exists():
        raise CompareError(f"{run_dir}: not a run folder (no run.json); make one with `distilforge run CONFIG`")
    run = read_run(run_dir)
    ev = run.get("eval") or {}
    if not ev.get("before") and not ev.get("after"):
        raise CompareError(f"{run_dir}: no eval yet; run `distilforge eval {run_dir}` (needs eval.files or a "
                           "validation split with gold answers)")
    train = run.get("train") or {}
    after = _per_question(run_dir, "after") if ev.get("after") else None
    if after is not None and len(after) != ev["after"]["n"]:
        after = None  # a stale file from an earlier eval: not the questions behind run.json's numbers
    return {
        "run": str(run_dir),
        "method": train.get("method") if train.get("steps") is not None else "untrained",
        "student": train.get("student") or (ev.get("before") or {}).get("model"),
        "teacher": train.get("teacher") if train.get("method") == "gkd" else None,
        "eval": ev,
        "sets": _sets(ev),
        "after_questions": after,
    }


def wilson(correct: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float]:
    """p_b - p_a for independent samples (correct, n), with Newcombe's hybrid score 95% interval."""
    (ca, na), (cb, nb) = a, b
    pa, pb = ca / na if na else 0.0, cb / nb if nb else 0.0
    (la, ua), (lb, ub) = wilson(ca, na), wilson(cb, nb)
    d = pb - pa
    return d, d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2), d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)


def paired_bootstrap(a: list[bool], b: list[bool], *, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """mean(b - a) on the same questions, with a paired bootstrap 95% interval."""
    n = len(a)
    if n == 0:
        return 0.0, 0.0, 0.0
    diffs = [int(y) - int(x) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def _split(results: list[tuple[str, bool]], sets: dict[str, int]) -> dict[str, list[bool]]:
    """Per-question results cut into eval sets: eval scores the sets one after another, in this order."""
    out, start = {}, 0
    for name, n in sets.items():
        out[name] = [correct for _, correct in results[start : start + n]]
        start += n
    return out


def compare_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """The comparison of RUN_DIRS (the first is the reference A), or CompareError saying why there is none."""
    if len(run_dirs) < 2:
        raise CompareError("compare needs at least two run folders")
    runs = [load_evaluated(Path(d)) for d in run_dirs]
    for i, run in enumerate(runs):
        run["label"] = _label(i)
    first = runs[0]
    for other in runs[1:]:
        if other["sets"] != first["sets"]:
            raise CompareError(f"{first['run']} and {other['run']} were evaluated on different question sets: "
                               f"{_describe(first['sets'])} vs {_describe(other['sets'])}; evaluate both on the same "
                               "eval.files (`distilforge eval RUN --set eval.files=[...]`)")
        a, b = first["after_questions"], other["after_questions"]
        if a is not None and b is not None and [q for q, _ in a] != [q for q, _ in b]:
            raise CompareError(f"{first['run']} and {other['run']} were evaluated on different questions with the same "
                               f"set names and sizes ({_describe(first['sets'])}); evaluate both on the same eval.files")
    names = list(first["sets"])
    rows: list[dict[str, Any]] = []
    for run in runs:
        ev = run["eval"]
        for name in [*names, *(["overall"] if len(names) != 1 else [])]:
            block = {moment: (ev[moment] if name == "overall" else (ev[moment].get("sets") or {}).get(name))
                     for moment in ("before", "after") if ev.get(moment)}
            row = {"label": run["label"], "run": run["run"], "method": run["method"], "student": run["student"], "set": name,
                   "n": run["sets"].get(name, sum(run["sets"].values())),
                   "before": _acc(block.get("before")), "after": _acc(block.get("after")), "vs_first": None}
            if run is not first and block.get("after") and first["eval"].get("after"):
                row["vs_first"] = _difference(first, run, name)
            rows.append(row)
    return {"runs": [{k: r[k] for k in ("label", "run", "method", "student", "teacher")} for r in runs],
            "sets": first["sets"], "rows": rows}


def _label(i: int) -> str:
    """A, B, ... Z, AA, AB, ...: short names for the table."""
    return _label(i // 26 - 1) + chr(ord("A") + i % 26) if i >= 26 else chr(ord("A") + i)


def _acc(block: dict[str, Any] | None) -> dict[str, Any] | None:
    if not block:
        return None
    return {"accuracy": block["accuracy"], "correct": block["correct"], "n": block["n"], "ci95": block["ci95"]}


def _difference(first: dict[str, Any], run: dict[str, Any], name: str) -> dict[str, Any]:
    """run's after-training accuracy minus the first run's on set `name` (or overall)."""
    a, b = first["after_questions"], run["after_questions"]
    if a is not None and b is not None:
        if name == "overall":
            xs, ys = [c for _, c in a], [c for _, c in b]
        else:
            xs, ys = _split(a, first["sets"])[name], _split(b, run["sets"])[name]
        d, low, high = paired_bootstrap(xs, ys)
        how = "paired bootstrap"
    else:
        def counts(r: dict[str, Any]) -> tuple[int, int]:
            block = r["eval"]["after"] if name == "overall" else r["eval"]["after"]["sets"][name]
            return block["correct"], block["n"]

        d, low, high = newcombe(counts(first), counts(run))
        how = "two-proportion (Newcombe)"
    return {"difference": round(d, 4), "ci95": [round(low, 4), round(high, 4)], "interval": how}
