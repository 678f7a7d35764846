"""The outcome benchmark's tasks and controlled teacher (benchmarks/symbolic.py), and outcome_gpu's table:
the parts that need no training. The benchmarks themselves are run by hand (see README, Benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_jsonl

from distilforge.core.grading import grade, split_answer
from distilforge.core.seeds import read_seeds
from distilforge.schemas import SeedFields

sys.path.insert(0, str(REPO / "benchmarks"))
import symbolic


@pytest.mark.parametrize("task", symbolic.TASKS)
def test_controlled_teacher_is_right_its_share_and_consistent_when_wrong(task, tmp_path):
    held_out = symbolic.items(task, 100, seed=1)
    train = symbolic.items(task, 300, seed=0, avoid={i.question for i in held_out})
    assert len({i.question for i in train + held_out}) == 400  # distinct, and no held-out question in training
    assert [i.question for i in symbolic.items(task, 5, seed=0)] == [i.question for i in train[:5]]  # seeded
    seeds = list(read_seeds(str(write_jsonl(tmp_path / "s.jsonl", [{"question": i.question, "answer": i.gold}
                                                                    for i in train])), SeedFields()))
    kinds = {s.answer_type for s in seeds}
    assert kinds == {"last_letter": {"text"}, "coin_flip": {"yes_no"}, "shuffled_objects": {"choice"}}[task]
    right = 0
    for seed, item in zip(seeds, train, strict=True):
        text = symbolic.teacher_answer(task, item, 0, 0.6)
        assert text == symbolic.teacher_answer(task, item, 0, 0.6)  # the same sample always gets the same answer
        rationale, raw = split_answer(text)
        assert raw is not None and len(rationale.splitlines()) >= 3  # step by step, then a stated answer
        ok = grade(raw, seed.gold, seed.answer_type)
        right += ok
        if not ok and task == "last_letter":  # the wrong letter is in the steps, and carried into the answer
            assert f'= "{raw.rstrip(".")}"' in rationale
        if not ok and task == "shuffled_objects":
            assert f"option ({raw.rstrip('.')})" in rationale
    assert 0.5 <= right / len(train) <= 0.7


def test_outcome_gpu_table_says_what_was_not_available(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"part": "vllm-offline generation", "value": "not available: vllm is not installed"})
                       + "\n" + json.dumps({"part": "full fine-tuning", "value": "1,000 train tokens/s", "detail": "x"}) + "\n")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "outcome_gpu.py"), "table", "--results", str(results)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| vllm-offline generation | not available: vllm is not installed |" in done.stdout
    assert "full fine-tuning" in done.stdout


def test_outcome_markdown_flags_unparsed_answers():
    import outcome_cpu

    row = {"condition": "filters on", "accuracy": 0.1, "ci95": [0.0, 0.2], "n": 10, "parsed": 0.3, "kept": 5,
           "spend_usd": 0.01, "minutes": 1.0, "vs_base": {"difference": 0.1, "ci95": [0.0, 0.2]}}
    text = outcome_cpu.markdown({"teacher_accuracy": 0.6, "machine": "test", "command": "x", "overrides": "", "tasks": [
        {"task": "coin_flip", "train": 10, "eval": 10, "minutes": 1.0, "rows": [row], "pairs": []}]})
    assert "controlled" in text and "30% (most answers unparsed)" in text
    assert Path(outcome_cpu.__file__).name == "outcome_cpu.py"


def test_closing_table_says_when_most_answers_were_unreadable():
    from rich.console import Console

    from distilforge.report.terminal import print_run_table

    def block(parsed: int) -> dict:
        return {"n": 10, "correct": 0, "accuracy": 0.0, "ci95": [0.0, 0.0], "parsed": parsed}

    console = Console(record=True, width=200)
    print_run_table({"name": "x", "kept": 1, "eval": {"before": block(9), "after": block(3)}}, console)
    text = console.export_text()
    before, after = (line for line in text.splitlines() if "student accuracy" in line)
    assert "unreadable" not in before
    assert "answers parsed: 3/10 - most answers unreadable" in after


@pytest.mark.parametrize(("round_share", "runs", "label"), [
    (1.6, [2, 2, 4, 2, 3], "one pass, k=3 (rounds' spend)"),  # the rounds bought 60% more: one pass with 3 samples
    (1.1, [2, 2, 4, 2], "one pass, k=2 (rounds' spend) = filters on"),  # rounds to 2 samples: filters on is that run
])
def test_every_condition_runs_once_and_one_pass_matches_the_rounds_spend(round_share, runs, label, tmp_path,
                                                                         monkeypatch):
    """The plumbing of `--conditions all` without training: `run` (one `distilforge run`) is replaced by a stub
    whose spend is what the real one's would be, per sample and per round."""
    import outcome_cpu

    samples: list[int] = []

    def stub(config: Path, out: Path, base: Path | None = None) -> dict:
        import yaml

        job = yaml.safe_load(config.read_text())
        samples.append(job["generation"]["samples_per_seed"])
        assert job["teacher"]["cache"] is False and job["train"] == {"enabled": True}
        n = 6
        return {"cost_usd": 0.01 * samples[-1] * (round_share if job.get("loop") else 1), "kept": 5, "_seconds": 1,
                "_cpu_seconds": 1, "_before": [False] * n, "_after": [i < len(samples) for i in range(n)],
                "_before_parsed": [True] * n, "_after_parsed": [True] * n, "train": {"train_loss": 0.1}}

    monkeypatch.setattr(outcome_cpu, "run", stub)
    report = outcome_cpu.main(["--task", "coin_flip", "--train", "10", "--eval", "6", "--conditions", "all",
                               "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    assert samples == runs
    rows = [r["condition"] for r in report["tasks"][0]["rows"]]
    assert rows == ["base (before training)", "filters off", "filters on", "filters on, k=4", "rounds", label]
    assert [p["comparison"] for p in report["tasks"][0]["pairs"]] == [
        "filters on minus filters off", "filters on, k=4 minus filters on", "rounds minus one pass, equal spend"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert "partial" not in saved and len(saved["tasks"][0]["rows"]) == 6
    assert "| rounds minus one pass, equal spend |" in (tmp_path / "r.md").read_text()
