"""A run folder's promises (issue 17): a validation split by seed, the whole folder's money across every
invocation, one writer at a time, and nothing paid before a check that could fail. Driven through the
CLI as a user would, against the fake server's own bill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
from conftest import api_config, write_config, write_jsonl
from fake_openai import Behaviour

PRICES = {"input_per_million": 1000.0, "output_per_million": 1000.0}


def _seeds(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl", [{"id": f"conv-p{i:06d}", "question": f"Q{i}: what is {i} + 1?",
                                                   "answer": f"#### {i + 1}"} for i in range(n)])


def _answers(fake, n: int) -> None:
    for i in range(n):
        fake.script[f"Q{i}:"] = Behaviour([f"{i} and one more make {i + 1}.\nThe answer is {i + 1}.",
                                           f"Add one to {i}: {i + 1}.\nThe answer is {i + 1}."])


def _job(tmp_path: Path, fake, n: int, **extra) -> dict:
    _answers(fake, n)
    data = api_config(_seeds(tmp_path, n), fake.base_url)
    data["seeds"]["fields"]["id"] = "id"
    data["budget"] = {"prices": PRICES}
    data.update(extra)
    return data


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in output, output
    return lines[0]


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _billed(fake) -> float:
    return fake.billed_usd(PRICES["input_per_million"], PRICES["output_per_million"])


def _subprocess(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distilforge", *args],
                            env={**os.environ, "DISTILFORGE_TEST_KEY": "sk-test-secret-123"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(predicate, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# -- 1. the validation split --------------------------------------------------------------------------------


def test_every_sample_of_a_seed_is_on_one_side_of_the_split(fake, cli, tmp_path):
    data = _job(tmp_path, fake, 30)
    data["output"] = {"validation_fraction": 0.3}
    out = tmp_path / "run"
    result = cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    splits = datasets.load_from_disk(str(out / "dataset"))
    train, validation = set(splits["train"]["seed_id"]), set(splits["validation"]["seed_id"])
    assert validation and train and not train & validation
    assert len(splits["train"]) + len(splits["validation"]) == 60
    assert all(list(splits[name]["seed_id"]).count(i) == 2 for name in splits for i in splits[name]["seed_id"])
    assert "split is by seed" in (out / "dataset" / "README.md").read_text()


# -- 2. money: the whole folder's, across every invocation ---------------------------------------------------


@pytest.mark.slow
def test_cost_and_tokens_cover_an_interrupted_resumed_and_rerun_folder(fake, cli, tmp_path):
    n = 16
    data = _job(tmp_path, fake, n)
    data["generation"]["samples_per_seed"] = 1
    data["teacher"]["max_concurrency"] = 2
    fake.latency = (0.2, 0.25)
    job, out = write_config(tmp_path / "job.yaml", data), tmp_path / "run"
    proc = _subprocess(["generate", str(job), "--output", str(out)])
    _wait(lambda: fake.chat_requests >= 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    first = _run_json(out)
    assert first["status"] == "interrupted" and 0 < len(fake.bills) < n
    assert first["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6)
    fake.latency = (0.0, 0.0)
    resumed = cli("generate", job, "--output", out)
    assert resumed.exit_code == 0, resumed.output
    run = _run_json(out)
    assert len(fake.bills) == n  # only the missing requests were sent
    assert run["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6) and run["cost_usd"] > first["cost_usd"]
    assert (run["tokens"]["prompt"], run["tokens"]["completion"]) == fake.billed_tokens()
    assert run["this_invocation"]["cost_usd"] == pytest.approx(run["cost_usd"] - first["cost_usd"], abs=1e-6)
    assert sum(run["cost_by_stage"].values()) == pytest.approx(run["cost_usd"], abs=1e-6)
    again = cli("generate", job, "--output", out)  # a finished folder, run again: nothing sent, nothing lost
    assert again.exit_code == 0, again.output
    rerun = _run_json(out)
    assert len(fake.bills) == n
    assert rerun["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6)
    assert (rerun["tokens"]["prompt"], rerun["tokens"]["completion"]) == fake.billed_tokens()
    assert rerun["this_invocation"]["cost_usd"] == 0 and not any(rerun["this_invocation"]["tokens"].values())
    assert len(rerun["invocations"]) == 2
    assert f"${rerun['cost_usd']:.4f}" in again.output and "$0.0000 (" not in again.output
    assert f"${rerun['cost_usd']:.4f}" in (out / "report.md").read_text()


# -- 3. one writer at a time ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_writer_is_refused_with_the_holders_pid_and_bills_nothing(fake, cli, tmp_path):
    n = 12
    data = _job(tmp_path, fake, n)
    data["generation"]["samples_per_seed"] = 1
    data["teacher"]["max_concurrency"] = 1
    fake.latency = (0.15, 0.2)
    job, out = write_config(tmp_path / "job.yaml", data), tmp_path / "twice"
    first = _subprocess(["generate", str(job), "--output", str(out)])
    try:
        _wait(lambda: fake.chat_requests >= 1)
        second = cli("generate", job, "--output", out, expect=2)
        assert second.exit_code == 2, second.output
        line = _one_line(second.output)
        assert f"pid {first.pid}" in line and str(out) in line
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert len(fake.bills) == n  # the refused writer sent nothing
    run = _run_json(out)
    assert run["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6) and run["kept"] == n
    after = cli("generate", job, "--output", out)  # the lock went with its holder
    assert after.exit_code == 0, after.output


# -- 4. everything a run needs, resolved before the first request ---------------------------------------------


@pytest.mark.parametrize("case", ["student", "seeds"])
def test_an_offline_hub_id_is_exit_2_before_any_request(fake, cli, tmp_path, case):
    data = _job(tmp_path, fake, 3)
    if case == "student":
        data["train"] = {"enabled": True, "student": "distilforge-test/no-such-model"}
    else:
        data["seeds"]["path"] = "distilforge-test/no-such-dataset"
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, expect=2)
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert "HF_HUB_OFFLINE" in line and "local" in line and "distilforge-test/no-such-" in line
    assert fake.chat_requests == 0 and not fake.bills and not out.exists()


def test_a_student_folder_without_a_tokenizer_is_exit_2_before_any_request(fake, cli, tmp_path):
    broken = tmp_path / "student"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # looks like a model folder; nothing in it loads
    data = _job(tmp_path, fake, 3)
    data["train"] = {"enabled": True, "student": str(broken)}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, expect=2)
    assert result.exit_code == 2, result.output
    assert str(broken) in _one_line(result.output) and "tokenizer" in result.output
    assert fake.chat_requests == 0 and not out.exists()


def test_a_failure_after_spending_is_failed_with_the_error_never_completed(fake, cli, tmp_path, tiny_model):
    broken = tmp_path / "student"
    shutil.copytree(tiny_model, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not weights")  # config and tokenizer load; the weights do not, at training
    data = _job(tmp_path, fake, 4)
    data["train"] = {"enabled": True, "student": str(broken), "max_steps": 1}
    data["eval"] = {"include_validation": False}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, expect=1)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    run = _run_json(out)
    assert run["status"] == "failed" and run["error"] and "\n" not in run["error"] and fake.bills
    assert f"error: {run['error']}"[:60] in " ".join(result.output.split())
    assert run["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6)


# -- 5. a teacher that refuses the key or is down -------------------------------------------------------------


def test_a_refused_key_is_exit_2_naming_the_variable_with_nothing_sent(fake, cli, tmp_path):
    fake.require_key = "sk-the-right-one"
    out = tmp_path / "run"
    result = cli("generate", write_config(tmp_path / "job.yaml", _job(tmp_path, fake, 8)), "--output", out, expect=2)
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert "DISTILFORGE_TEST_KEY" in line and "sk-test-secret-123" not in line
    assert fake.chat_requests == 0 and not out.exists()


def test_a_teacher_that_is_down_is_exit_2_naming_the_url_without_credentials(fake, cli, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = _job(tmp_path, fake, 4)
    data["teacher"]["base_url"] = f"http://user:hunter2@127.0.0.1:{port}/v1"
    out = tmp_path / "run"
    started = time.monotonic()
    result = cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out, expect=2)
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert f"127.0.0.1:{port}" in line and "hunter2" not in line and "refused" in line
    assert not out.exists() and time.monotonic() - started < 30


@pytest.mark.parametrize("keyless", [True, False])
def test_credentials_in_the_teacher_url_log_in_and_are_never_written(keyless, fake, cli, tmp_path):
    """A keyless server behind a password (api_key_env: null) gets the URL's user:password as HTTP Basic
    auth, as curl does; with a key, the key is the Authorization header and the URL's credentials are left
    out. Either way the run pays, and the password is in no output or file."""
    import base64

    password = "pw-planted-9137"
    if keyless:
        fake.require_authorization = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    else:
        fake.require_key = "sk-test-secret-123"  # the value of DISTILFORGE_TEST_KEY in these tests
    data = _job(tmp_path, fake, 4)
    data["teacher"]["base_url"] = fake.base_url.replace("//", f"//alice:{password}@")
    if keyless:
        data["teacher"]["api_key_env"] = None
    out = tmp_path / "run"
    result = cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out, expect=0)
    assert result.exit_code == 0, result.output
    assert _run_json(out)["kept"] == 8 and fake.bills
    written = [f.read_bytes() for f in out.rglob("*") if f.is_file()]
    token = base64.b64encode(f"alice:{password}".encode())
    assert not any(password.encode() in blob or token in blob for blob in written)
    assert password not in result.output


def test_a_run_whose_first_requests_all_get_401_stops_at_once(fake, cli, tmp_path):
    fake.require_key = "sk-the-right-one"
    fake.serves_models = False  # no model list to probe: the first requests are the probe
    data = _job(tmp_path, fake, 16)
    data["teacher"]["max_concurrency"] = 4
    out = tmp_path / "run"
    result = cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out, expect=1)
    assert result.exit_code == 1, result.output
    assert fake.chat_requests <= 4 and not fake.bills  # the ones already in flight, and no others
    run = _run_json(out)
    assert run["status"] == "failed" and run["stopped"] == "key_refused"
    assert "DISTILFORGE_TEST_KEY" in run["error"] and "DISTILFORGE_TEST_KEY" in result.output


# -- 6. Ctrl-C during training --------------------------------------------------------------------------------


@pytest.mark.train
def test_ctrl_c_during_training_is_interrupted_and_the_money_stays_whole(fake, cli, tmp_path, tiny_model):
    data = _job(tmp_path, fake, 8)
    data["train"] = {"enabled": True, "student": str(tiny_model), "epochs": 500, "batch_size": 1, "max_length": 256,
                     "lora": {"r": 2, "alpha": 4}}
    data["eval"] = {"include_validation": False}
    job, out = write_config(tmp_path / "job.yaml", data), tmp_path / "run"
    proc = _subprocess(["run", str(job), "--output", str(out)])
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        _wait(lambda: any(line.startswith("training ") for line in lines) or proc.poll() is not None)
        time.sleep(2)  # loading the student, or its first of 8,000 steps: the train stage either way
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines)
    run = _run_json(out)
    assert run["status"] == "interrupted" and run["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6)
    again = cli("run", job, "--output", out, "--set", "train.enabled=false")
    assert again.exit_code == 0, again.output
    run = _run_json(out)
    assert run["status"] == "completed" and run["cost_usd"] == pytest.approx(_billed(fake), abs=1e-6)
    assert run["this_invocation"]["cost_usd"] == 0


# -- 8. a run that keeps nothing ------------------------------------------------------------------------------


def test_the_whole_chain_with_nothing_kept_renders_every_skipped_stage(fake, cli, tmp_path, tiny_model):
    data = _job(tmp_path, fake, 4)
    fake.script = {}
    fake.default = Behaviour(["I am not sure."])  # every sample unparseable
    data["train"] = {"enabled": True, "student": str(tiny_model), "max_steps": 1}
    data["eval"] = {"include_validation": True, "max_tokens": 4}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = _run_json(out)
    assert run["kept"] == 0 and run["train"] == {"skipped": "no kept records to train on"}
    assert "skipped" in (out / "report.md").read_text() and (out / "report.html").exists()
    for command in (("report", out), ("eval", out)):
        step = cli(*command)
        assert step.exit_code == 0, step.output
    train = cli("train", out, expect=2)
    assert train.exit_code == 2 and "no kept records" in train.output
    assert _run_json(out)["status"] == "completed"


def test_one_merge_for_cost_tokens_and_counts():
    """RunReport.merge: the folder's money replaces, a part's work adds, a first pass counts afresh."""
    from distilforge.schemas.run_report import RunReport

    first = RunReport.model_validate({
        "cost_usd": 0.5, "tokens": {"prompt": 10}, "samples": {"expected": 4, "failed": 1, "new": 4},
        "requests": {"sent": 3, "errors": {"429": 1}}, "stages": {"generate": {"cost_usd": 0.5}},
        "budget": {"max_usd": 2.0, "unknown_outcome_usd": 0.1}, "train": {"steps": 7}})
    teacher_eval = RunReport.model_validate({
        "cost_usd": 0.75, "tokens": {"prompt": 30}, "requests": {"sent": 2, "errors": {"429": 2, "500": 1}},
        "stages": {"eval_teacher": {"cost_usd": 0.25}}, "budget": {"max_usd": 2.0, "unknown_outcome_usd": 0.05}})
    run = first.merge(teacher_eval).model_dump(exclude_unset=True)
    assert run["cost_usd"] == 0.75 and run["tokens"] == {"prompt": 30}  # read whole from the journals
    assert run["requests"] == {"sent": 5, "errors": {"429": 3, "500": 1}}
    assert set(run["stages"]) == {"generate", "eval_teacher"} and run["budget"]["unknown_outcome_usd"] == 0.15
    assert run["train"] == {"steps": 7} and "kept" not in run  # other stages' sections ride along; unset stays out
    a_round = RunReport.model_validate({"samples": {"expected": 2, "failed": 3}, "kept": 9})
    assert first.merge(a_round).samples == {"expected": 6, "failed": 3, "new": 4}
    again = first.recounted().merge(RunReport.model_validate({"samples": {"expected": 4}, "requests": {"sent": 1}}))
    assert again.samples == {"expected": 4} and again.requests == {"sent": 1} and again.cost_usd == 0.5
