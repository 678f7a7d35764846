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
import hashlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.journal import journal_totals
from distilforge.core.run_files import read_run, update_run, write_atomic
from distilforge.core.seeds import SeedSelection, read_questions
from distilforge.pipeline.build import build_pipeline
from distilforge.pipeline.data_stage import generate_stage, make_executor
from distilforge.pipeline.preflight import Facts
from distilforge.pipeline.sources import SeedSource
from distilforge.pipeline.stages import eval_stage, train_stage
from distilforge.pipeline.steps import RunControl
from distilforge.schemas import ConfigError, DecontaminateSpec, JobConfig
from distilforge.schemas.records import Seed

PROBE_FILE = "probe.jsonl"


def probe_path(run_dir: Path) -> Path:
    return run_dir / "rounds" / PROBE_FILE


def with_probe_guard(config: JobConfig, run_dir: Path) -> JobConfig:
    """The config with a decontamination filter against the probe questions: nothing reaches the
    dataset that holds most of one of them (a copy of a probe question under another id)."""
    guard = DecontaminateSpec(name="decontaminate", eval_sets=[str(probe_path(run_dir))], fields=["question"])
    return config.model_copy(update={"filters": [*config.filters, guard]}, deep=True)


def probe_row(seed: Seed) -> dict[str, Any]:
    """A probe question as the probe file keeps it (with its gold and its worked answer)."""
    return {"id": seed.seed_id, "question": seed.question, "answer": seed.meta.get("raw_answer", seed.gold),
            "gold": seed.gold}


def _seed_rows(config: JobConfig, path: str, keep: Any) -> list[dict[str, Any]]:
    """The rows of the job's seeds (through its `SeedSource`) or of another file with the seeds' fields."""
    s = config.seeds
    seeds = SeedSource(config).read() if path == s.path else read_questions(
        path, s.fields, answer_type=config.generation.answer_type)
    return [probe_row(seed) for seed in seeds if keep(seed.seed_id)]


def _write_probe_rows(run_dir: Path, rows: list[dict[str, Any]]) -> int:
    path = probe_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def write_probe(config: JobConfig, run_dir: Path, rows: list[dict[str, Any]]) -> int:
    """The probe split's questions (with gold, read by preflight), kept in the run folder so every round
    uses the same."""
    loop = config.loop
    if not rows:
        raise ConfigError(f"loop.probe_fraction: {loop.probe_fraction} of these seeds leaves no probe question")
    return _write_probe_rows(run_dir, rows)


def _trained_ids(run_dir: Path) -> set[str]:
    """The seeds of the dataset's train split: what the student trains on (or would)."""
    import datasets

    if not (run_dir / "dataset").exists():
        return set()
    train = datasets.load_from_disk(str(run_dir / "dataset"))["train"].select_columns(["seed_id"])
    return {i for batch in train.iter(batch_size=10_000) for i in batch["seed_id"]}


def probe_plan(config: JobConfig, run_dir: Path) -> tuple[str, list[dict[str, Any]] | None]:
    """Where `improve` takes its probe from, checked before anything is written: ("kept", None) for a
    run that held one apart, ("file", rows) for `--probe FILE`, ("untrained", rows) for the seeds
    the student never trained on (at most `loop.probe_fraction` of the seeds, by a stable hash)."""
    run = read_run(run_dir)
    if run.get("status") not in ("completed", "stopped"):
        raise ConfigError(f"{run_dir}: this run is {run.get('status') or 'not started'}; finish it first "
                          "(rerun `distilforge generate` on it), then improve it")
    if config.loop.probe_file:
        rows = _seed_rows(config, config.loop.probe_file, lambda i: True)
        if not rows:
            raise ConfigError(f"loop.probe_file: {config.loop.probe_file} holds no question")
        return "file", rows
    if probe_path(run_dir).exists():
        return "kept", None
    trained = _trained_ids(run_dir)
    untrained = _seed_rows(config, config.seeds.path, lambda i: i not in trained)
    if not untrained:
        raise ConfigError(f"{run_dir}: the student trained on every seed, so none is left to probe it with; "
                          "give held-out questions with --probe FILE")
    g = config.generation
    size = max(1, round(config.loop.probe_fraction * (len(untrained) + len(trained))))
    untrained.sort(key=lambda r: hashlib.blake2b(f"probe:{g.rng_seed}:{r['id']}".encode(), digest_size=8).digest())
    return "untrained", untrained[:size]


def _first_pass_as_round_zero(run_dir: Path) -> None:
    """A run without `loop.rounds` kept no round 0: its dataset, rejects and failures become it, so
    every round's dataset is built from the first pass's rows and the rounds'."""
    import datasets

    folder = run_dir / "rounds" / "round-00"
    if folder.exists():
        return
    tmp = folder.with_name("round-00.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    kept = datasets.load_from_disk(str(run_dir / "dataset"))
    datasets.concatenate_datasets([kept["train"], kept["validation"]]).to_json(str(tmp / "kept.jsonl"), lines=True)
    if (run_dir / "rejected").exists():
        datasets.load_from_disk(str(run_dir / "rejected")).to_json(str(tmp / "rejected.jsonl"), lines=True)
    if (run_dir / "failed.jsonl").exists():
        (tmp / "failed.jsonl").write_bytes((run_dir / "failed.jsonl").read_bytes())
    tmp.rename(folder)


def prepare_probe(config: JobConfig, run_dir: Path) -> None:
    """Under the folder's lock, before the first round: the probe file, and round 0."""
    _, rows = probe_plan(config, run_dir)
    if rows is not None:
        _write_probe_rows(run_dir, rows)
    _first_pass_as_round_zero(run_dir)


def _probe_questions(config: JobConfig, run_dir: Path) -> list[tuple[str, Any]]:
    from distilforge.schemas import SeedFields

    fields = SeedFields(question="question", answer="answer", id="id")
    return [("probe", seed) for seed in read_questions(str(probe_path(run_dir)), fields,
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

        probe = {seed.seed_id for _, seed in _probe_questions(config, run_dir)}
        train = [(seed.seed_id, seed.question) for seed in SeedSource(config).read() if seed.seed_id not in probe]
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


def _stop_reason(history: list[dict[str, Any]], min_gain: float, explicit: bool) -> str | None:
    """The stopping rule. An explicit `improve --rounds N` runs its N rounds whatever the gain."""
    last = history[-1]
    if not last["probe"]["failed_ids"]:
        return "no probe question answered wrong"
    if last.get("stopped") == "budget":
        return "the budget is spent"
    if not explicit and len(history) >= 2 and last["probe"]["accuracy"] <= history[-2]["probe"]["accuracy"] + min_gain:
        return f"probe accuracy gained no more than {min_gain} over the round before"
    return None


def run_rounds(config: JobConfig, run_dir: Path, control: RunControl, console: Console, rounds: int, *,
               explicit: bool = False) -> dict[str, Any]:
    """Run up to `rounds` targeted rounds after what the run folder already holds; returns run.json.

    `explicit` (`distilforge improve --rounds N`): N rounds are run unless nothing is left to target
    (no probe question wrong) or the budget is spent; `loop.min_gain` governs only `loop.rounds`.
    """
    if explicit:
        prepare_probe(config, run_dir)
    run = read_run(run_dir)
    history: list[dict[str, Any]] = list(run.get("rounds") or [])
    if not history:  # round 0: the first pass, trained; its probe accuracy is the baseline
        history.append({"round": 0, "new_records": run.get("kept", 0), "cost_usd": run.get("cost_usd"),
                        "probe": _evaluate_probe(config, run_dir, console), "eval": (run.get("eval") or {}).get("after")})
        run = update_run(run_dir, rounds=history)
    neighbours: _Neighbours | None = None
    loop = config.loop
    offset = config.generation.samples_per_seed + loop.samples * (len(history) - 1)
    for _ in range(rounds):
        last, stop = history[-1], _stop_reason(history, loop.min_gain, explicit)
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
        selection = SeedSelection(only=frozenset(targets))  # the targets are training seeds, never probe ones
        pipeline = build_pipeline(round_config, selection, round=number, first_sample=offset)
        facts = Facts(len(targets), len(targets) * round_config.generation.samples_per_seed)
        summary = asyncio.run(generate_stage(round_config, run_dir, control, console, make_executor(config), facts,
                                             pipeline=pipeline, round=number))
        offset += loop.samples
        entry: dict[str, Any] = {"round": number, "targets": {"failed_probe": failed, "seeds": targets},
                                 "new_records": summary.get("round_kept", 0), "rejected": summary.get("rejected"),
                                 "cost_usd": summary.get("round_cost_usd"), "stopped": summary.get("stopped")}
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
