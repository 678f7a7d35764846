"""White-box distillation (TRL's GKD) from a local teacher that shares the student's tokenizer, its
refusals, and `distilforge compare` of two evaluated runs. Tiny random-init models, CPU, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import api_config, write_config, write_jsonl
from fake_openai import Behaviour

SEEDS = [{"question": f"Q{i}: 3 dozen eggs at $.50 each, how much?", "answer": "#### 18"} for i in range(4)]
EVALS = [{"question": "What is 2 + 3?", "answer": "#### 5"}, {"question": "Is fire cold?", "answer": False},
         {"question": "What is 4 * 4?", "answer": "#### 16"}]


@pytest.fixture(scope="session")
def teacher_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A wider tiny model with the student's (tiny_model's) tokenizer."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gkd") / "teacher", [], hidden_size=64, seed=1,
                            tokenizer_from=tiny_model)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a tokenizer of its own."""
    from tiny_model import build_tiny_model

    corpus = ["Other words, other merges: a different vocabulary altogether.", "0123456789 ?!"] * 20
    return build_tiny_model(tmp_path_factory.mktemp("gkd") / "other", corpus, vocab_size=500)


def _job(fake, tmp_path: Path, student: Path, **train) -> dict:
    """Four seeds answered by the fake API teacher; training and eval on a three-question file."""
    fake.default = Behaviour(["36 eggs at $0.50 each cost $18.\nThe answer is 18."])
    data = api_config(write_jsonl(tmp_path / "seeds.jsonl", SEEDS), fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    data["train"] = {"enabled": True, "student": str(student), "max_steps": 2, "batch_size": 2, "max_length": 128,
                     "lora": {"r": 4, "alpha": 8}, **train}
    data["eval"] = {"files": [{"path": str(write_jsonl(tmp_path / "eval.jsonl", EVALS)), "name": "mixed"}],
                    "max_tokens": 8, "batch_size": 4}
    return data


def _gkd(teacher: Path | None, **gkd) -> dict:
    return {"method": "gkd", "gkd": {"teacher": str(teacher) if teacher else None, "max_new_tokens": 8, **gkd}}


@pytest.mark.train
def test_gkd_run_trains_a_student_from_the_teachers_logits(fake, cli, tmp_path, tiny_model, teacher_model,
                                                           monkeypatch):
    from distilforge.trainers.gkd import trl_gkd

    _, GKDTrainer = trl_gkd()
    generated = []
    on_policy = GKDTrainer.generate_on_policy_outputs
    monkeypatch.setattr(GKDTrainer, "generate_on_policy_outputs",
                        staticmethod(lambda *a: generated.append(1) or on_policy(*a)))
    data = _job(fake, tmp_path, tiny_model, **_gkd(teacher_model, lmbda=1.0))
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    train = run["train"]
    assert train["method"] == "gkd" and train["steps"] == 2 and train["teacher"] == str(teacher_model)
    assert train["lora"] is True and train["gkd"]["lmbda"] == 1.0 and train["tokens_per_second"]
    assert len(generated) == 2  # lmbda 1: every step trains on the student's own samples
    assert (out / "student" / "adapter_config.json").exists()
    losses = json.loads((out / "student" / "loss.json").read_text())
    assert len(losses) == 2 and all(loss["loss"] >= 0 for loss in losses)
    assert run["eval"]["after"]["n"] == 3  # eval, report and publish read the student as after SFT
    assert "gkd" in (out / "report.md").read_text()
    from distilforge.publish.hub import model_card

    card = model_card(run, "org/student")
    assert "library_name: peft" in card and "GKDTrainer" in card


@pytest.mark.train
def test_gkd_teacher_defaults_to_the_jobs_local_teacher(fake, cli, tmp_path, tiny_model, teacher_model):
    """`distilforge train` on a finished run: teacher.backend local names the model whose logits teach;
    with train.gkd.lora false every weight of the student trains and a full model is saved."""
    data = _job(fake, tmp_path, tiny_model)
    data["train"]["enabled"] = False
    out = tmp_path / "run"
    assert cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out).exit_code == 0
    result = cli("train", out, "--set", "train.method=gkd", "--set", "teacher.backend=local",
                 "--set", f"teacher.model={teacher_model}", "--set", "train.gkd.lora=false",
                 "--set", "train.gkd.lmbda=0", "--set", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    train = json.loads((out / "run.json").read_text())["train"]
    assert train["teacher"] == str(teacher_model) and train["lora"] is False and train["steps"] == 1
    assert (out / "student" / "config.json").exists() and (out / "student" / "loss.json").exists()


@pytest.mark.train
def test_a_stopped_gkd_training_saves_nothing(fake, cli, tmp_path, tiny_model, teacher_model):
    from distilforge.schemas import load_config
    from distilforge.trainers import train_student
    from distilforge.trainers.sft import TrainingStopped

    data = _job(fake, tmp_path, tiny_model, **_gkd(teacher_model, lmbda=0))
    data["train"]["enabled"] = False
    out = tmp_path / "run"
    assert cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out).exit_code == 0
    with pytest.raises(TrainingStopped):
        train_student(load_config(out / "config.yaml"), out, should_stop=lambda: True)
    assert not (out / "student").exists() and not (out / ".checkpoints").exists()


@pytest.mark.slow  # its own tiny model and tokenizer are built first (seconds)
def test_gkd_refuses_mismatched_tokenizers_before_writing(fake, cli, tmp_path, tiny_model, other_model):
    data = _job(fake, tmp_path, tiny_model, **_gkd(other_model))
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, expect=2)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "different vocabularies" in line
    assert str(other_model) in line and str(tiny_model) in line
    assert not out.exists() and not fake.bills  # nothing written, nothing sent


def test_gkd_refuses_an_api_teacher_without_a_local_one(fake, cli, tmp_path, tiny_model):
    data = _job(fake, tmp_path, tiny_model, **_gkd(None))
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, expect=2)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "an API teacher has none" in line and "train.gkd.teacher" in line
    assert not out.exists() and not fake.bills


def test_the_service_keeps_the_gkd_teacher_inside_the_data_roots(tmp_path, teacher_model):
    from distilforge.schemas import JobConfig
    from distilforge.service.settings import Settings
    from distilforge.service.validate import check_job

    root = tmp_path / "data"
    root.mkdir()
    (root / "seeds.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    config = JobConfig.model_validate({"seeds": {"path": str(root / "seeds.jsonl")},
                                       "train": {"method": "gkd", "gkd": {"teacher": str(teacher_model)}}})
    errors = check_job(config, Settings(home=tmp_path / "home", data_roots=[root.resolve()]))
    assert [where for where, _ in errors] == ["train.gkd.teacher"]


@pytest.mark.train
def test_compare_prints_an_sft_and_a_gkd_student_side_by_side(fake, cli, tmp_path, tiny_model, teacher_model,
                                                                monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    runs = {}
    for name, train in (("sft", {"method": "lora"}), ("gkd", _gkd(teacher_model))):
        folder = tmp_path / name
        folder.mkdir()
        data = _job(fake, folder, tiny_model, **train)
        data["eval"]["files"][0]["path"] = str(write_jsonl(tmp_path / "eval.jsonl", EVALS))  # one eval file
        result = cli("run", write_config(folder / "job.yaml", data), "--output", folder / "run")
        assert result.exit_code == 0, result.output
        runs[name] = folder / "run"

    result = cli("compare", runs["sft"], runs["gkd"])
    assert result.exit_code == 0, result.output
    assert str(runs["sft"]) in result.output and str(runs["gkd"]) in result.output
    assert " lora " in result.output and " gkd " in result.output and "mixed" in result.output
    assert "paired bootstrap" in result.output

    data = json.loads(cli("compare", runs["sft"], runs["gkd"], "--json").output)
    sft, gkd = data["rows"]  # one eval set: one row per run, no separate overall row
    evals = {name: json.loads((folder / "run.json").read_text())["eval"] for name, folder in runs.items()}
    assert sft["after"]["accuracy"] == evals["sft"]["after"]["accuracy"] and sft["vs_first"] is None
    assert gkd["method"] == "gkd" and gkd["before"]["n"] == 3
    diff = gkd["vs_first"]
    assert diff["difference"] == round(evals["gkd"]["after"]["accuracy"] - evals["sft"]["after"]["accuracy"], 4)
    assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1]


@pytest.mark.train
def test_compare_refuses_runs_it_cannot_compare(fake, cli, tmp_path, tiny_model):
    """A run without eval, and runs scored on different question sets: exit 2 with one line."""
    data = _job(fake, tmp_path, tiny_model)
    data["train"]["enabled"] = False
    assert cli("generate", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "plain").exit_code == 0
    data["train"]["enabled"] = True
    data["train"]["max_steps"] = 1
    assert cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "done").exit_code == 0

    result = cli("compare", tmp_path / "done", tmp_path / "plain", expect=2)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no eval yet" in result.output and f"distilforge eval {tmp_path / 'plain'}" in result.output

    two = write_jsonl(tmp_path / "two.jsonl", EVALS[:2])
    assert cli("eval", tmp_path / "plain", "--set", f"eval.files=[{{path: {two}, name: mixed}}]").exit_code == 0
    result = cli("compare", tmp_path / "done", tmp_path / "plain", expect=2)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "different question sets: mixed (3) vs mixed (2)" in result.output


def test_difference_intervals():
    from distilforge.evaluation.compare import newcombe, paired_bootstrap

    d, low, high = paired_bootstrap([True, False] * 50, [True, True] * 50)
    assert d == 0.5 and 0.35 < low < 0.5 < high < 0.65
    d, low, high = newcombe((48, 80), (56, 70))  # Newcombe (1998), table II example (a), method 10
    assert round(d, 4) == 0.2 and round(low, 4) == 0.0524 and round(high, 4) == 0.3339
