"""Targeted rounds (`loop:` / `distilforge improve`): the student's mistakes steer the teacher.

A probe split of the seeds (a stable hash of their ids, `loop.probe_fraction`) is held apart: the
first pass never generates for it, every round's data is decontaminated against it, and it is never
in the dataset. After each training round the student answers the probe questions; the ones it gets
wrong, and their `loop.neighbours` nearest training seeds by all-MiniLM-L6-v2, get new teacher data:
more samples (`resample`) or evolved, harder variants answered by the teacher (`evolve`), through
the same filters, within `loop.per_round_usd`. The student then trains on the grown dataset,
continuing from its last adapter.

The stopping rule: stop after `loop.rounds` rounds, when the student gets no probe question wrong,
when a round's probe accuracy is no more than `loop.min_gain` above the round before it (more data no
longer helps), or when the budget is spent. Each round's records carry its number (`round`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.config import ConfigError, DecontaminateSpec, JobConfig
from distilforge.core.journal import journal_totals
from distilforge.core.run_files import read_run, update_run, write_atomic
from distilforge.core.seeds import SeedSelection, in_probe, read_seeds
from distilforge.core.steps import RunControl
from distilforge.run.checks import Facts
from distilforge.run.generate import generate_stage, make_executor
from distilforge.run.pipeline import build_pipeline
from distilforge.run.stages import eval_stage, train_stage

PROBE_FILE = "probe.jsonl"


def probe_path(run_dir: Path) -> Path:
    return run_dir / "rounds" / PROBE_FILE


def with_probe_guard(config: JobConfig, run_dir: Path) -> JobConfig:
    """The config with a decontamination filter against the probe questions: nothing reaches the
    dataset that shares a 13-word run with one of them (a copy of a probe question under another id)."""
    guard = DecontaminateSpec(name="decontaminate", eval_sets=[str(probe_path(run_dir))], fields=["question"])
    return config.model_copy(update={"filters": [*config.filters, guard]}, deep=True)


def write_probe(config: JobConfig, run_dir: Path) -> int:
    """The probe split's questions (with gold), kept in the run folder so every round uses the same."""
    s, g, loop = config.seeds, config.generation, config.loop
    rows = [{"id": seed.seed_id, "question": seed.question, "answer": seed.meta.get("raw_answer", seed.gold),
             "gold": seed.gold}
            for seed in read_seeds(s.path, s.fields, limit=s.limit, answer_type=g.answer_type, split=s.split,
                                   subset=s.subset, format=s.format)
            if in_probe(seed.seed_id, loop.probe_fraction, g.rng_seed)]
    if not rows:
        raise ConfigError(f"loop.probe_fraction: {loop.probe_fraction} of these seeds leaves no probe question")
    path = probe_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def _probe_questions(config: JobConfig, run_dir: Path) -> list[tuple[str, Any]]:
    from distilforge.core.config import SeedFields

    fields = SeedFields(question="question", answer="answer", id="id")
    return [("probe", seed) for seed in read_seeds(str(probe_path(run_dir)), fields,
                                                   answer_type=config.generation.answer_type)]


def _evaluate_probe(config: JobConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    from distilforge.evaluation import evaluate_model

    student = run_dir / "student"
    adapter = str(student) if (student / "adapter_config.json").exists() else None
    model = config.train.student if adapter or not (student / "config.json").exists() else str(student)
    summary = evaluate_model(config, _probe_questions(config, run_dir), model=model, adapter=adapter,
                             label="probe", console=console, details=True)
    failed = sorted(r["seed_id"] for r in summary.pop("results") if not r["correct"])
    summary.pop("sets", None)
    return {**summary, "failed_ids": failed}


class _Neighbours:
    """The training seeds' questions embedded once (all-MiniLM-L6-v2), for nearest-seed look-ups."""

    def __init__(self, config: JobConfig, run_dir: Path):
        import numpy as np

        from distilforge.models.embeddings import Embedder

        s, g, loop = config.seeds, config.generation, config.loop
        train = [(seed.seed_id, seed.question) for seed in read_seeds(
            s.path, s.fields, limit=s.limit, answer_type=g.answer_type, split=s.split, subset=s.subset, format=s.format)
            if not in_probe(seed.seed_id, loop.probe_fraction, g.rng_seed)]
        self.ids = [i for i, _ in train]
        self.embedder = Embedder()
        cache = run_dir / "rounds" / "index.npy"
        if cache.exists() and np.load(cache, mmap_mode="r").shape[0] == len(train):
            self.vectors = np.load(cache)
        else:
            self.vectors = self.embedder.encode([q for _, q in train])
            np.save(cache, self.vectors)

    def nearest(self, questions: list[str], k: int) -> list[str]:
        if not questions or not k:
            return []
        query = self.embedder.encode(questions)
        chosen: list[str] = []
        for row in query @ self.vectors.T:
            for index in row.argsort()[::-1][:k]:
                if self.ids[index] not in chosen:
                    chosen.append(self.ids[index])
        return chosen


def _round_config(config: JobConfig, run_dir: Path) -> JobConfig:
    """A round's config: its samples, its slice of the budget, and the probe guard."""
    loop = config.loop
    update: dict[str, Any] = {}
    if loop.per_round_usd is not None:
        spent, _ = journal_totals(run_dir)
        cap = spent + loop.per_round_usd
        if config.budget.max_usd is not None:
            cap = min(cap, config.budget.max_usd)
        update["budget"] = config.budget.model_copy(update={"max_usd": cap})
    generation = config.generation.model_copy(update={"samples_per_seed": loop.samples, "adaptive": None,
                                                      "keep": "all", "max_per_seed": None})
    if loop.strategy == "evolve":
        generation = generation.model_copy(update={"mode": "evol-instruct", "rounds": 1, "template": None,
                                                   "samples_per_seed": 1})
    update["generation"] = generation
    return with_probe_guard(config.model_copy(update=update, deep=True), run_dir)


def run_rounds(config: JobConfig, run_dir: Path, control: RunControl, console: Console, rounds: int) -> dict[str, Any]:
    """Run up to `rounds` targeted rounds after what the run folder already holds; returns run.json."""
    run = read_run(run_dir)
    history: list[dict[str, Any]] = list(run.get("rounds") or [])
    if not probe_path(run_dir).exists():
        raise ConfigError(f"{run_dir}: this run held no probe split apart (set loop.rounds before the first "
                          "pass); the student has trained on every seed")
    if not history:  # round 0: the first pass, trained; its probe accuracy is the baseline
        history.append({"round": 0, "new_records": run.get("kept", 0), "cost_usd": run.get("cost_usd"),
                        "probe": _evaluate_probe(config, run_dir, console), "eval": (run.get("eval") or {}).get("after")})
        run = update_run(run_dir, rounds=history)
    neighbours: _Neighbours | None = None
    loop = config.loop
    offset = config.generation.samples_per_seed + loop.samples * (len(history) - 1)
    for _ in range(rounds):
        last, stop = history[-1], None
        if not last["probe"]["failed_ids"]:
            stop = "no probe question answered wrong"
        elif len(history) >= 2 and last["probe"]["accuracy"] <= history[-2]["probe"]["accuracy"] + loop.min_gain:
            stop = f"probe accuracy gained no more than {loop.min_gain} over the round before"
        elif last.get("stopped") == "budget":
            stop = "the budget is spent"
        if stop:
            run = update_run(run_dir, rounds_stopped=stop)
            console.print(f"[dim]targeted rounds stop: {stop}[/dim]")
            return run
        number = len(history)
        failed = last["probe"]["failed_ids"]
        probe = {seed.seed_id: seed.question for _, seed in _probe_questions(config, run_dir)}
        neighbours = neighbours or _Neighbours(config, run_dir)
        targets = neighbours.nearest([probe[i] for i in failed if i in probe], loop.neighbours)
        console.print(f"[bold]round {number}[/bold]: {len(failed)} probe questions wrong -> {len(targets)} seeds")
        round_config = _round_config(config, run_dir)
        selection = SeedSelection(only=frozenset(targets), probe=(loop.probe_fraction, config.generation.rng_seed))
        pipeline = build_pipeline(round_config, selection, round=number, first_sample=offset)
        facts = Facts(len(targets), len(targets) * round_config.generation.samples_per_seed)
        summary = asyncio.run(generate_stage(round_config, run_dir, control, console, make_executor(config), facts,
                                             pipeline=pipeline, round=number))
        offset += loop.samples
        entry: dict[str, Any] = {"round": number, "targets": {"failed_probe": failed, "seeds": targets},
                                 "new_records": summary.get("round_kept", 0), "rejected": summary.get("rejected"),
                                 "cost_usd": summary.get("cost_usd"), "stopped": summary.get("stopped")}
        if summary.get("status") not in ("completed", "stopped") or not summary.get("round_kept"):
            entry["probe"] = last["probe"]
            history.append(entry)
            run = update_run(run_dir, rounds=history)
            if summary.get("status") not in ("completed", "stopped"):
                return run
            continue
        train_stage(config, run_dir, control, console, resume=True)
        run = eval_stage(config, run_dir, control, console, trained=True)
        entry["eval"] = (run.get("eval") or {}).get("after")
        entry["probe"] = _evaluate_probe(config, run_dir, console)
        history.append(entry)
        run = update_run(run_dir, rounds=history)
    return run
