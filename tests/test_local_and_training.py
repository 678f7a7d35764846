"""The in-process teacher, TRL training and evaluation, on a tiny random-init model (CPU)."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

from distilforge.teachers.local import LocalTeacher


def test_local_teacher_batches_concurrent_requests(tiny_model):
    teacher = LocalTeacher(str(tiny_model), temperature=0.8, max_tokens=12, batch_size=8, seed=0)

    async def go():
        await teacher.start()
        try:
            msgs = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(5)]
            return await asyncio.gather(*(teacher.attempt(m, n=2) for m in msgs))
        finally:
            await teacher.aclose()

    responses = asyncio.run(go())
    assert [len(r.completions) for r in responses] == [2] * 5
    assert all(c.finish_reason in ("stop", "length") for r in responses for c in r.completions)
    assert all(r.prompt_tokens > 0 and 0 < r.completion_tokens <= 24 for r in responses)
    assert teacher.batches < 5  # several requests shared a generate() call


@pytest.mark.train
def test_run_with_training_and_eval_through_the_cli(fake, cli, tmp_path, tiny_model):
    fake.script = {
        "eggs": Behaviour(["36 eggs at 0.5 each.\nThe answer is 18.", "3 * 12 * 0.5 = 18.\n#### 18"]),
        "whale": Behaviour(["Whales nurse their young.\nThe answer is yes."] * 2),
    }
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"question": "Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
        {"question": "Is a whale a mammal?", "answer": True},
    ])
    evals = write_jsonl(tmp_path / "eval.jsonl", [
        {"question": "What is 2 + 3?", "answer": "#### 5"},
        {"question": "Is fire cold?", "answer": False},
        {"question": "What is 4 * 4?", "answer": "#### 16"},
    ])
    data = api_config(seeds, fake.base_url)
    data["train"] = {"enabled": True, "student": str(tiny_model), "method": "lora", "max_steps": 3,
                     "batch_size": 2, "max_length": 128, "lora": {"r": 4, "alpha": 8}}
    data["eval"] = {"files": [{"path": str(evals), "name": "mixed"}], "max_tokens": 8, "batch_size": 4}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 3 and run["rejected"] == {"duplicate": 1}
    assert run["train"]["steps"] == 3 and run["train"]["examples"] == 3
    assert (out / "student" / "adapter_config.json").exists()
    losses = json.loads((out / "student" / "loss.json").read_text())
    assert len(losses) == 3 and all(loss["loss"] > 0 for loss in losses)
    for stage in ("before", "after"):
        block = run["eval"][stage]
        assert block["n"] == 3 and 0 <= block["accuracy"] <= 1 and block["sets"]["mixed"]["n"] == 3
        assert block["ci95"][0] <= block["accuracy"] <= block["ci95"][1]
    assert "student accuracy after" in result.output

    # The stages also run one at a time on the run folder.
    result = cli("train", out, "--set", "train.max_steps=2")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["train"]["steps"] == 2
    result = cli("eval", out)
    assert result.exit_code == 0, result.output


@pytest.mark.train
def test_full_fine_tuning_saves_a_model(fake, cli, tmp_path, tiny_model):
    fake.script = {"eggs": Behaviour(["36 * 0.5 = 18.\nThe answer is 18."])}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": "3 dozen eggs at $.50?", "answer": "#### 18"}])
    data = api_config(seeds, fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    cli("generate", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    result = cli("train", tmp_path / "run", "--set", f"train.student={tiny_model}", "--set", "train.method=full",
                 "--set", "train.max_steps=1", "--set", "train.batch_size=1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "student" / "config.json").exists()


@pytest.mark.train
def test_default_method_fine_tunes_a_small_student_fully(fake, cli, tmp_path, tiny_model):
    """The default `train.method: auto`: every weight of a student under 1B parameters, at 1e-4; LoRA at 2e-4."""
    fake.script = {"eggs": Behaviour(["36 * 0.5 = 18.\nThe answer is 18."])}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": "3 dozen eggs at $.50?", "answer": "#### 18"}])
    data = api_config(seeds, fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    assert cli("generate", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run").exit_code == 0
    result = cli("train", tmp_path / "run", "--set", f"train.student={tiny_model}", "--set", "train.batch_size=1",
                 "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    assert (train["method"], train["learning_rate"], train["epochs"], train["steps"]) == ("full", 1e-4, 2.0, 2)
    assert (tmp_path / "run" / "student" / "config.json").exists()
    result = cli("train", tmp_path / "run", "--set", f"train.student={tiny_model}", "--set", "train.max_steps=1",
                 "--set", "train.method=lora")
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    assert (train["method"], train["learning_rate"]) == ("lora", 2e-4)
    assert (tmp_path / "run" / "student" / "adapter_config.json").exists()


def test_training_on_an_empty_dataset_is_a_clear_error(fake, cli, tmp_path, tiny_model):
    fake.script = {"eggs": Behaviour(["no idea"])}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": "3 dozen eggs at $.50?", "answer": "#### 18"}])
    cli("generate", write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url)), "--output", tmp_path / "run")
    assert len(load_kept(tmp_path / "run")) == 0
    result = cli("train", tmp_path / "run", "--set", f"train.student={tiny_model}", expect=2)
    assert result.exit_code == 2 and "no kept records" in result.output


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_smollm2_answers_offline():
    """The packaged SmolLM2-135M-Instruct GGUF: dequantized once into the cache, then generates."""
    teacher = LocalTeacher("smollm2-135m-instruct", temperature=0.0, max_tokens=8, batch_size=2)
    responses = teacher.generate_batch([([{"role": "user", "content": "Is the sun a star? Answer yes or no."}], 1)])
    assert responses[0].completions[0].text.strip()
    assert responses[0].completion_tokens > 0


@pytest.mark.train
def test_step_by_step_format_trains_label_and_rationale_tasks(fake, cli, tmp_path, tiny_model):
    fake.default = Behaviour(["3 dozen is 36; 36 * 0.5 = 18.\nThe answer is 18.", "Half of 36 is 18.\nThe answer is 18."])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"Q{i}: 3 dozen eggs at $.50?", "answer": "#### 18"}
                                                   for i in range(3)])
    cli("generate", write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url)), "--output", tmp_path / "run")
    result = cli("train", tmp_path / "run", "--set", f"train.student={tiny_model}", "--set", "train.format=step-by-step",
                 "--set", "train.alpha=0.6", "--set", "train.max_steps=2", "--set", "train.max_length=128")
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    # 6 kept rows -> 6 label examples and round(6 * 0.4 / 0.6) = 4 rationale examples.
    assert train["format"] == "step-by-step" and train["examples"] == 10


def test_step_by_step_examples_carry_task_prefixes():
    from distilforge.core.formats import LABEL_PREFIX, RATIONALE_PREFIX, step_by_step_examples

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "r\nThe answer is 1."}],
             "answer": "1", "rationale": "r"} for i in range(4)]
    examples = step_by_step_examples(rows, alpha=0.5, seed=0)
    labels = [e for e in examples if e["prompt"][-1]["content"].startswith(LABEL_PREFIX)]
    rationales = [e for e in examples if e["prompt"][-1]["content"].startswith(RATIONALE_PREFIX)]
    assert len(labels) == len(rationales) == 4
    assert labels[0]["completion"][0]["content"] == "The answer is 1." and rationales[0]["completion"][0]["content"] == "r"
