"""Students: loss masking on tokens, base models, evaluation, the report, and publishing the student."""

from __future__ import annotations

import json
import re

import pytest
from conftest import DATA, api_config, write_config, write_jsonl
from fake_openai import Behaviour

from distilforge.schemas import load_config

pytestmark = pytest.mark.train

QUESTIONS = [{"question": f"Q{i}: 3 dozen eggs at $.50 each, how much?", "answer": "#### 18"} for i in range(4)]


def _generate(fake, cli, tmp_path, student, **train):
    fake.default = Behaviour(["36 eggs at $0.50 each cost $18.\nThe answer is 18."])
    data = api_config(write_jsonl(tmp_path / "seeds.jsonl", QUESTIONS), fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    data["train"] = {"student": str(student), "method": "lora", "max_steps": 2, "batch_size": 2, "max_length": 128,
                     "lora": {"r": 4, "alpha": 8}, **train}
    config = write_config(tmp_path / "job.yaml", data)
    result = cli("generate", config, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_completion_only_loss_masks_the_prompt_tokens(fake, cli, tmp_path, tiny_model):
    from distilforge.trainers.sft import build_trainer

    run = _generate(fake, cli, tmp_path, tiny_model)
    trainer, _ = build_trainer(load_config(run / "config.yaml"), run)
    tokenizer = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    masked = [t for t, label in zip(ids, labels, strict=True) if label == -100]
    assert tokenizer.decode(trained).strip().startswith("36 eggs at $0.50 each cost $18.\nThe answer is 18.")
    prompt = tokenizer.decode(masked)
    assert "3 dozen eggs" in prompt and "The answer is 18" not in prompt  # the question is never a target


def test_base_student_without_a_chat_template_gets_chatml(fake, cli, tmp_path, tiny_model):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    run = _generate(fake, cli, tmp_path, base)
    result = cli("train", run)
    assert result.exit_code == 0, result.output
    train = json.loads((run / "run.json").read_text())["train"]
    assert any("ChatML" in note for note in train["notes"])
    from transformers import AutoTokenizer

    assert "<|im_start|>" in AutoTokenizer.from_pretrained(run / "student").chat_template


def test_qlora_and_packing_on_cpu(fake, cli, tmp_path, tiny_model):
    run = _generate(fake, cli, tmp_path, tiny_model)
    result = cli("train", run, "--set", "train.method=qlora", expect=2)
    assert result.exit_code == 2 and "qlora needs a CUDA GPU and bitsandbytes" in result.output
    result = cli("train", run, "--set", "train.packing=true")
    assert result.exit_code == 0, result.output
    train = json.loads((run / "run.json").read_text())["train"]
    assert train["packing"] is False and any("FlashAttention" in n for n in train["notes"])


def test_eval_reproduces_a_planted_accuracy(fake, cli, tmp_path, tiny_model):
    rows = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[:10]]
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows)
    for i, row in enumerate(rows):  # the teacher answers exactly 7 of 10 right
        gold = row["answer"].split("####")[-1].strip().replace(",", "")
        answer = gold if i < 7 else str(int(gold) + 1)
        fake.script[row["question"][:60]] = Behaviour([f"Worked it out.\nThe answer is {answer}."])
    run = _generate(fake, cli, tmp_path, tiny_model)
    result = cli("eval", run, "--set", "eval.teacher=true", "--set", f"eval.files=[{{path: {eval_file}, name: gsm8k}}]",
                 "--set", "eval.max_tokens=8")
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "run.json").read_text())["eval"]
    assert ev["teacher"]["accuracy"] == 0.7 and ev["teacher"]["correct"] == 7 and ev["teacher"]["n"] == 10
    assert ev["teacher"]["ci95"][0] < 0.7 < ev["teacher"]["ci95"][1]
    assert ev["before"]["n"] == 10  # the student on the same questions
    # Each question's result, with what the student wrote, in eval-file order (for paired comparisons).
    per_question = [json.loads(line) for line in (run / "eval" / "before.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in per_question] == [r["answer"].split("####")[-1].strip().replace(",", "") for r in rows]
    assert all(isinstance(r["completion"], str) and "answer" in r for r in per_question)
    assert sum(r["correct"] for r in per_question) == ev["before"]["correct"]


def test_report_renders_with_plots(fake, cli, tmp_path, tiny_model):
    run = _generate(fake, cli, tmp_path, tiny_model)
    cli("train", run)
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert page.startswith("<!doctype html>") and len(re.findall(r'src="data:image/png;base64,', page)) == 1
    md = (run / "report.md").read_text()
    assert "| kept | 4 |" in md and "report_files/loss.png" in md
    assert 'class="bar"' in page  # the funnel, drawn in HTML


def test_publish_student_at_the_hub_boundary(fake, cli, tmp_path, tiny_model, monkeypatch):
    import huggingface_hub

    run = _generate(fake, cli, tmp_path, tiny_model)
    cli("train", run)
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(kw) or "url")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit",
                        lambda self, repo_id, **kw: calls.append(kw) or type("C", (), {"oid": "1"})())
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    result = cli("publish", run, "--model-repo", "org/student")
    assert result.exit_code == 0, result.output
    repo_kw, commit_kw = calls
    assert repo_kw["repo_type"] == "model"
    paths = {op.path_in_repo for op in commit_kw["operations"]}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= paths
    card = next(op for op in commit_kw["operations"] if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert "library_name: peft" in card and "fake-teacher" in card
