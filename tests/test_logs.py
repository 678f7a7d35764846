"""Logs without a terminal (CI, cron, the service): formatted lines for training and eval, no raw dicts or
carriage returns, commands that print their own title."""

from __future__ import annotations

import json
import os

import pytest
from conftest import api_config, write_config, write_jsonl
from fake_openai import Behaviour

pytestmark = pytest.mark.train


def test_train_and_eval_print_lines_not_bars_in_a_log(fake, cli, tmp_path, tiny_model):
    fake.script = {"eggs": Behaviour(["36 eggs at 0.5 each.\nThe answer is 18."]),
                   "whale": Behaviour(["Whales nurse their young.\nThe answer is yes."])}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"question": "Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
        {"question": "Is a whale a mammal?", "answer": True}])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"question": "What is 2 + 3?", "answer": "#### 5"},
                                                  {"question": "Is fire cold?", "answer": False}])
    data = api_config(seeds, fake.base_url, generation__samples_per_seed=1)
    data["train"] = {"enabled": False, "student": str(tiny_model), "method": "lora", "max_steps": 3,
                     "batch_size": 2, "max_length": 128, "lora": {"r": 4, "alpha": 8}}
    data["eval"] = {"files": [{"path": str(evals), "name": "mixed"}], "max_tokens": 8, "batch_size": 1}
    out = tmp_path / "run"
    result = cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output

    trained = cli("train", out)
    assert trained.exit_code == 0, trained.output
    assert "training: 3/3 steps (100%), loss " in trained.output
    assert "{'loss'" not in trained.output and "\r" not in trained.output
    assert os.environ.get("TQDM_DISABLE") == "1"  # no library bar draws carriage returns into the log

    evaluated = cli("eval", out)
    assert evaluated.exit_code == 0, evaluated.output
    assert "eval after: 2/2 questions (100%)" in evaluated.output and "\r" not in evaluated.output
    assert "distilforge eval" in evaluated.output and "distilforge run" not in evaluated.output
    assert "samples expected" not in evaluated.output  # the generation summary is generate's, not eval's
    run = json.loads((out / "run.json").read_text())
    assert run["eval"]["after"]["n"] == 2
