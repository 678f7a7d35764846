"""The README's promises about money, input and exit codes, driven through the CLI as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

PRICES = {"input_per_million": 1000.0, "output_per_million": 1000.0}
GOOD = '{"correctness": 5, "relevance": 5, "clarity": 5, "reason": "fine"}'


def _seeds(tmp_path: Path, n: int, prefix: str = "P") -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"{prefix}{i}: what is {i} + 1?", "answer": f"#### {i + 1}"}
                                                  for i in range(n)])


def _answers(fake, n: int, prefix: str = "P") -> None:
    for i in range(n):
        fake.script[f"{prefix}{i}:"] = Behaviour([f"{i} and one more make {i + 1}.\nThe answer is {i + 1}."])


def _judge(fake, **params) -> dict:
    return {"name": "judge", "min_score": 3, "batch": 4, "prices": PRICES, "teacher": {
        "backend": "openai", "model": "fake-judge", "base_url": fake.base_url, "api_key_env": "DISTILFORGE_TEST_KEY",
        "retry": {"max_attempts": 2, "second_pass_after_s": 0.1}, "params": {"temperature": 0.0, "max_tokens": 64, **params}}}


def _run(cli, tmp_path, data, *extra, expect=0):
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, *extra, expect=expect)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
    return result, run, out


# -- money: one budget for every paid call ------------------------------------------------------------


def test_the_judge_pays_from_the_same_budget_and_the_cap_covers_both(fake, cli, tmp_path):
    n = 12
    _answers(fake, n)
    fake.script = {"Answer to grade": Behaviour([GOOD]), **fake.script}  # verdicts first: the prompt quotes answers
    data = api_config(_seeds(tmp_path, n), fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    data["filters"] = [_judge(fake)]
    data["budget"] = {"prices": PRICES, "max_usd": 1.0}
    result, run, _ = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    billed = fake.billed_usd(PRICES["input_per_million"], PRICES["output_per_million"])
    assert billed <= 1.0 and run["stopped"] == "budget"  # the cap bound, counting the judge's calls
    stages = run["cost_by_stage"]
    assert set(stages) == {"generate", "judge"} and stages["judge"] > 0
    assert run["cost_usd"] == pytest.approx(sum(stages.values())) and run["cost_usd"] >= billed - 1e-9
    judge = run["stages"]["judge"]
    sent_to_judge = sum(1 for r in fake.requests if r["body"]["model"] == "fake-judge")
    assert judge["requests"]["sent"] == sent_to_judge > 0
    assert run["requests"]["sent"] == run["stages"]["generate"]["requests"]["sent"] + judge["requests"]["sent"]
    assert run["tokens"]["prompt"] == sum(s["tokens"]["prompt"] for s in run["stages"].values())


@pytest.mark.train
def test_eval_teacher_pays_from_the_run_budget(fake, cli, tmp_path, tiny_model):
    _answers(fake, 4)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"question": "P9: what is 9 + 1?", "answer": "#### 10"}])
    data = api_config(_seeds(tmp_path, 4), fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    data["budget"] = {"prices": PRICES}
    data["train"] = {"enabled": True, "student": str(tiny_model), "max_steps": 1, "batch_size": 2, "max_length": 256,
                     "lora": {"r": 2, "alpha": 4}}
    data["eval"] = {"files": [str(eval_file)], "teacher": True, "max_tokens": 4}  # a bare path works
    fake.script["P9:"] = Behaviour(["Nine and one.\nThe answer is 10."])
    result, run, _ = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    assert run["eval"]["teacher"]["accuracy"] == 1.0
    assert run["cost_by_stage"]["eval_teacher"] > 0
    assert run["cost_usd"] == pytest.approx(sum(run["cost_by_stage"].values()))
    billed = fake.billed_usd(PRICES["input_per_million"], PRICES["output_per_million"])
    assert run["budget"]["spent_usd_total"] >= billed - 1e-9


@pytest.mark.slow
def test_a_run_without_a_cap_still_persists_reservations(fake, tmp_path):
    """Spend after a crash is known whether or not max_usd is set: the reservation is on disk first."""
    from distilforge.core.journal import JournalReader

    fake.latency = (1.0, 1.0)
    _answers(fake, 2)
    data = api_config(_seeds(tmp_path, 2), fake.base_url)
    data["budget"] = {"prices": PRICES}  # no max_usd
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distilforge", "run", str(write_config(tmp_path / "job.yaml", data)), "--output", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and fake.in_flight == 0:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, f"the run exited {proc.returncode} before it was killed"
    assert JournalReader(out).totals().orphans >= 1


# -- answers -----------------------------------------------------------------------------------------


def test_duplicate_means_already_kept_not_merely_seen(fake, cli, tmp_path):
    # Two samples of each seed with the same text. Seed 0's text fails the length filter, so neither copy
    # is kept: both are rejected by `length`, none as a duplicate. Seed 1's passes: one kept, one duplicate.
    fake.script = {"P0:": Behaviour(["Short.\nThe answer is 1."]),
                   "P1:": Behaviour(["One plus one is two, counting both.\nThe answer is 2."])}
    data = api_config(_seeds(tmp_path, 2), fake.base_url)
    data["filters"] = [{"name": "length", "min_words": 3}]
    result, run, _ = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    assert run["rejected"] == {"length": 2, "duplicate": 1} and run["kept"] == 1


# -- input: checked before anything is written, one line, exit 2 ---------------------------------------


@pytest.mark.parametrize("case", ["eval_file", "judge_key", "icl_pool", "template", "decontaminate"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(fake, cli, tmp_path, monkeypatch, case):
    data = api_config(_seeds(tmp_path, 3), fake.base_url)
    expect = ""
    if case == "eval_file":
        data["train"] = {"enabled": True}
        data["eval"] = {"files": [str(tmp_path / "missing.jsonl")]}
        expect = "missing.jsonl"
    elif case == "judge_key":
        judge = _judge(fake)
        judge["teacher"]["api_key_env"] = "DISTILFORGE_JUDGE_KEY"
        monkeypatch.delenv("DISTILFORGE_JUDGE_KEY", raising=False)
        data["filters"] = [judge]
        expect = "filters.0.teacher.api_key_env"
    elif case == "icl_pool":
        data["generation"] = {"mode": "icl", "icl": {"k": 5}}
        expect = "generation.icl.pool"
    elif case == "template":
        data["generation"]["template"] = "no_such_template.jinja"
        expect = "generation.template"
    elif case == "decontaminate":
        data["filters"] = [{"name": "decontaminate", "eval_sets": [str(tmp_path / "nope.jsonl")]}]
        expect = "filters.0.eval_sets.0"
    result, _, out = _run(cli, tmp_path, data, expect=2)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() and fake.requests == []


def test_estimate_of_a_mode_it_cannot_price_is_one_line(fake, cli, tmp_path):
    seeds = write_jsonl(tmp_path / "tasks.jsonl", [{"instruction": f"Write a poem about the number {i}."}
                                                    for i in range(3)])
    data = api_config(seeds, fake.base_url)
    data["generation"] = {"mode": "self-instruct"}
    result = cli("estimate", write_config(tmp_path / "job.yaml", data), expect=2)
    assert result.exit_code == 2 and "generation.mode" in result.output and "Traceback" not in result.output


def test_estimate_worst_case_holds_when_the_server_ignores_n(fake, cli, tmp_path):
    fake.supports_n = False  # asked for n=4, it answers one choice per request
    fake.default = Behaviour([" ".join(["word"] * 40) + "\nThe answer is 1."])
    data = api_config(_seeds(tmp_path, 3), fake.base_url)
    data["generation"]["samples_per_seed"] = 4
    data["budget"] = {"prices": PRICES}
    config = write_config(tmp_path / "job.yaml", data)
    est = json.loads(cli("estimate", config, "--json").output)
    result, run, _ = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    assert run["requests"]["sent"] == 12  # one request per sample
    billed = fake.billed_usd(PRICES["input_per_million"], PRICES["output_per_million"])
    assert est["worst_case"]["usd"] >= billed and est["worst_case"]["usd"] >= run["cost_usd"]


# -- real servers: negotiation, refused connections, restarts ---------------------------------------------


def test_structured_output_is_negotiated_once_per_endpoint(fake, cli, tmp_path):
    fake.accepts_formats = ("json_object", "text")  # like llama.cpp's server: json_schema gives a 500
    _answers(fake, 6)
    fake.script = {"Answer to grade": Behaviour([GOOD]), **fake.script}
    data = api_config(_seeds(tmp_path, 6), fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    data["filters"] = [_judge(fake)]
    result, run, _ = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    assert run["kept"] == 6 and run["filters"][-2]["name"] == "judge"
    judged = [r["body"] for r in fake.requests if r["body"]["model"] == "fake-judge"]
    forms = [b.get("response_format", {}).get("type") for b in judged]
    assert forms.count("json_schema") == 1 and forms[1:].count("json_object") == len(forms) - 1
    assert "schema" in judged[-1]["response_format"]  # the schema travels inline
    assert any("json_schema refused" in note for note in run["notes"])


@pytest.mark.slow
def test_a_refused_connection_is_a_connection_error_and_a_short_restart_loses_nothing(fake, cli, tmp_path):
    n = 6
    _answers(fake, n)
    fake.latency = (0.05, 0.1)
    data = api_config(_seeds(tmp_path, n), fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    data["teacher"]["max_concurrency"] = 1
    data["teacher"]["retry"] = {"max_attempts": 3, "max_wait_s": 0.5, "second_pass_after_s": 2.0}
    port = fake.port

    def outage() -> None:
        while fake.chat_requests < 2:
            time.sleep(0.01)
        fake.stop()
        time.sleep(1.0)
        fake.start(port=port)

    thread = threading.Thread(target=outage)
    thread.start()
    result, run, out = _run(cli, tmp_path, data)
    thread.join()
    assert result.exit_code == 0, result.output
    assert run["kept"] == n and run["samples"]["failed"] == 0 and (out / "failed.jsonl").read_text() == ""
    assert "connection" in run["requests"]["errors"] and "timeout" not in run["requests"]["errors"]


def test_failures_of_an_earlier_config_do_not_count_against_a_new_one(fake, cli, tmp_path):
    fake.default = Behaviour(always="503")
    _seeds(tmp_path, 2)
    data = api_config(tmp_path / "seeds.jsonl", fake.base_url)
    data["teacher"]["retry"] = {"max_attempts": 1, "second_pass_after_s": 0}
    result, run, out = _run(cli, tmp_path, data, expect=1)
    assert result.exit_code == 1 and run["status"] == "failed" and len((out / "failed.jsonl").read_text().splitlines()) == 4
    fake.default = Behaviour(["Some reasoning.\nThe answer is 1."])
    data["teacher"]["params"]["temperature"] = 0.3  # another logical request: the old dead letters are not its own
    result, run, out = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    assert run["samples"]["failed"] == 0 and (out / "failed.jsonl").read_text() == ""


# -- exit codes -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_exits_130_after_ctrl_c(fake, tmp_path):
    fake.latency = (0.3, 0.35)
    fake.default = Behaviour(["Add one.\nThe answer is 1."])
    data = api_config(_seeds(tmp_path, 16), fake.base_url)
    data["teacher"]["max_concurrency"] = 2
    data["generation"]["samples_per_seed"] = 1
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distilforge", "generate", str(write_config(tmp_path / "job.yaml", data)),
           "--output", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fake.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_run_where_every_request_failed_reports_wall_time(fake, cli, tmp_path):
    fake.default = Behaviour(always="503")
    data = api_config(_seeds(tmp_path, 1), fake.base_url)
    data["teacher"]["retry"] = {"max_attempts": 2, "second_pass_after_s": 0}
    result, run, _ = _run(cli, tmp_path, data, expect=1)
    assert result.exit_code == 1
    assert run["wall_seconds"] > 0 and "503" in run["error"]


def test_kept_rows_and_the_card_name_a_local_model_by_alias_or_file_name(cli, tmp_path, tiny_model):
    seeds = _seeds(tmp_path, 1)
    data = {"seeds": {"path": str(seeds)},
            "teacher": {"backend": "local", "model": str(tiny_model), "params": {"max_tokens": 4}},
            "generation": {"mode": "instruct"}}
    result, run, out = _run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    card = (out / "dataset" / "README.md").read_text()
    assert str(tiny_model) not in card and "model `model`" in card
    assert run["teacher"]["model"] == "model"
    assert all(m == "model" for m in load_kept(out)["teacher_model"])
