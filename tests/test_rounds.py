"""Targeted rounds: the student's probe mistakes and their nearest seeds get new teacher data."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

from distilforge.core.seeds import in_probe

TOPICS = ["apples", "trains", "coins", "pages", "eggs", "boxes", "birds", "chairs", "pencils", "marbles"]


def _seeds(tmp_path, n=40):
    rows = [{"id": f"S{i:02d}", "question": f"S{i:02d}: Ann has {i} {TOPICS[i % 10]} and gets one more. How many "
                                            f"{TOPICS[i % 10]} does she have?", "answer": f"#### {i + 1}"}
            for i in range(n)]
    probe = [r for r in rows if in_probe(r["id"], 0.2, 0)]
    # The same question as a probe question under another id must not reach the dataset either.
    copy = next(f"COPY{i}" for i in range(100) if not in_probe(f"COPY{i}", 0.2, 0))
    rows.append({"id": copy, "question": probe[0]["question"], "answer": probe[0]["answer"]})
    return write_jsonl(tmp_path / "seeds.jsonl", rows), rows, probe


def _job(tmp_path, fake, tiny_model, **loop):
    seeds, rows, probe = _seeds(tmp_path)
    for row in rows:
        i = int(row["answer"].split()[-1])
        fake.script[row["question"][:4]] = Behaviour([f"One more than {i - 1} is {i}.\nThe answer is {i}."])
    data = api_config(seeds, fake.base_url)
    data["seeds"]["fields"]["id"] = "id"
    data["generation"]["samples_per_seed"] = 1
    data["budget"] = {"prices": {"input_per_million": 1.0, "output_per_million": 1.0}}
    data["train"] = {"enabled": True, "student": str(tiny_model), "method": "lora", "max_steps": 1, "batch_size": 4, "max_length": 256,
                     "lora": {"r": 2, "alpha": 4}}
    data["eval"] = {"max_tokens": 4, "include_validation": False}
    data["loop"] = {"rounds": 2, "probe_fraction": 0.2, "neighbours": 2, "samples": 1, "per_round_usd": 1.0, **loop}
    return data, rows, probe


@pytest.mark.train
def test_rounds_target_the_failed_probe_questions_and_their_neighbours(fake, cli, tmp_path, tiny_model):
    data, rows, probe = _job(tmp_path, fake, tiny_model)
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    rounds = run["rounds"]
    probe_ids = {r["id"] for r in probe}
    # A random-init student gets every probe question wrong: round 1 targets exactly those, and each
    # one's 2 nearest training seeds by MiniLM.
    assert set(rounds[0]["probe"]["failed_ids"]) == probe_ids
    first = rounds[1]
    assert set(first["targets"]["failed_probe"]) == probe_ids
    from distilforge.models.embeddings import Embedder

    train = [r for r in rows if r["id"] not in probe_ids]  # the copy is a training seed (and a neighbour)
    embedder = Embedder()
    vectors = embedder.encode([r["question"] for r in train])
    expected = []
    for row in probe:
        scores = vectors @ embedder.encode([row["question"]])[0]
        for index in scores.argsort()[::-1][:2]:
            if train[index]["id"] not in expected:
                expected.append(train[index]["id"])
    assert sorted(first["targets"]["seeds"]) == sorted(expected)
    grown = [e for e in expected if not e.startswith("COPY")]  # the copy of a probe question is caught again
    assert first["new_records"] == len(grown) and first["probe"]["n"] == len(probe_ids)
    assert "ci95" in first["probe"] and first["cost_usd"] > 0
    # run.json's cost is the whole run's: every round's, summing to what the server billed.
    billed = fake.billed_usd(1.0, 1.0)
    assert run["cost_usd"] == pytest.approx(rounds[0]["cost_usd"] + first["cost_usd"], abs=2e-6)
    assert run["cost_usd"] == pytest.approx(sum(run["cost_by_stage"].values()), abs=2e-6)
    assert run["cost_usd"] >= billed - 1e-9 and run["budget"]["spent_usd_total"] >= billed - 1e-9
    # Nothing 0 ... the stopping rule: probe accuracy did not rise, so round 2 never ran.
    assert len(rounds) == 2 and "gained no more" in run["rounds_stopped"]

    kept = load_kept(out)
    rejected = datasets.load_from_disk(str(out / "rejected"))
    assert not probe_ids & set(kept["seed_id"])  # the probe split never reaches the training data
    assert not any(s.startswith("COPY") for s in kept["seed_id"])
    assert "decontaminate" in set(rejected["reject_reason"])  # the copy of a probe question was caught
    by_round = {r: sorted(s for s, rr in zip(kept["seed_id"], kept["round"], strict=True) if rr == r) for r in (0, 1)}
    assert by_round[1] == sorted(grown) and len(by_round[0]) == len(train) - 1  # the copy is rejected
    assert json.loads((out / "run.json").read_text())["train"]["notes"] == ["continued from the previous round's adapter"]
    card = (out / "dataset" / "README.md").read_text()
    assert "`round`" in card
    page = (out / "report.html").read_text()
    assert "<h2>Targeted rounds</h2>" in page and "gained no more" in page


@pytest.mark.train
def test_improve_runs_the_rounds_asked_for_on_any_finished_run(fake, cli, tmp_path, tiny_model):
    data, _, _ = _job(tmp_path, fake, tiny_model, rounds=1, min_gain=-0.5)  # min_gain may go below 0
    out = tmp_path / "run"
    assert cli("run", write_config(tmp_path / "job.yaml", data), "--output", out).exit_code == 0
    assert len(json.loads((out / "run.json").read_text())["rounds"]) == 2
    result = cli("improve", out, "--rounds", "1")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert len(run["rounds"]) == 3  # asked for by name: run, whatever the last round gained
    # Every count covers one scope, the whole run, and says so.
    samples = run["samples"]
    assert run["scope"].startswith("whole run") and run["kept"] == len(load_kept(out))
    assert run["kept"] + sum(run["rejected"].values()) + samples["failed"] + samples["not_sent"] == samples["expected"]

    # A plain run (no loop.rounds): the probe is held apart from the seeds the student never trained on.
    plain = {k: v for k, v in data.items() if k != "loop"}
    plain["output"] = {"validation_fraction": 0.25}
    other = tmp_path / "plain"
    assert cli("run", write_config(tmp_path / "plain.yaml", plain), "--output", other).exit_code == 0
    improved = cli("improve", other, "--rounds", "1")
    assert improved.exit_code == 0, improved.output
    probe = {json.loads(line)["id"] for line in (other / "rounds" / "probe.jsonl").read_text().splitlines()}
    trained = set(datasets.load_from_disk(str(other / "dataset"))["train"]["seed_id"])
    assert probe and not probe & trained
    assert len(json.loads((other / "run.json").read_text())["rounds"]) == 2

    # The student trained on every seed: improve asks for held-out questions, then takes them.
    plain["output"] = {"validation_fraction": 0.0}
    every = tmp_path / "every"
    assert cli("run", write_config(tmp_path / "every.yaml", plain), "--output", every).exit_code == 0
    refused = cli("improve", every, "--rounds", "1", expect=2)
    assert refused.exit_code == 2 and "--probe" in refused.output, refused.output
    assert not (every / "rounds").exists()
    held = write_jsonl(tmp_path / "held.jsonl", [{"id": f"H{i}", "question": f"H{i}: Bo has {i} cups and gets one "
                                                   "more. How many cups does he have?", "answer": f"#### {i + 1}"}
                                                  for i in range(3)])
    taken = cli("improve", every, "--rounds", "1", "--probe", held)
    assert taken.exit_code == 0, taken.output
    assert {json.loads(line)["id"] for line in (every / "rounds" / "probe.jsonl").read_text().splitlines()} == \
        {"H0", "H1", "H2"}
