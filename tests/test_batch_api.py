"""The OpenAI Batch API flow end to end against the fake: upload, poll, partial failure, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import api_config, write_config, write_jsonl
from fake_openai import Behaviour

PRICES = {"input_per_million": 100.0, "output_per_million": 100.0}


def _job(tmp_path, fake, n=10, **teacher):
    fake.script = {f"B{i}:": Behaviour([f"{i} + 1 = {i + 1}.\nThe answer is {i + 1}."] * 2,
                                       failures=["500"] if i % 4 == 0 else [])
                   for i in range(n)}
    seeds = write_jsonl(tmp_path / "seeds.jsonl",
                        [{"question": f"B{i}: {i} + 1?", "answer": f"#### {i + 1}"} for i in range(n)])
    data = api_config(seeds, fake.base_url)
    data["teacher"].update(batch_api=True, batch_poll_seconds=0.05, **teacher)
    data["budget"] = {"prices": PRICES}
    return write_config(tmp_path / "job.yaml", data)


@pytest.mark.slow
def test_batch_flow_with_partial_failure_and_discount(fake, cli, tmp_path):
    fake.batch_seconds = 0.2
    out = tmp_path / "run"
    result = cli("run", _job(tmp_path, fake, batch_max_requests=4), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    # 10 requests (n=2) split 4/4/2 across three files; 3 rows fail once and go in a second round.
    first_round = [b for b in fake.batches.values() if b["input_file_id"] in ("file-1", "file-2", "file-3")]
    assert len(first_round) == 3 and len(fake.batches) == 4
    assert run["batch"]["rows_ok"] == 10 and run["batch"]["rows_failed"] == 3
    assert run["kept"] == 10 and run["rejected"] == {"duplicate": 10} and run["samples"]["failed"] == 0
    assert all(r.get("batch") for r in fake.requests)  # nothing went to the synchronous endpoint
    full = (run["tokens"]["prompt"] + run["tokens"]["completion"]) * 100 / 1e6
    assert run["cost_usd"] == pytest.approx(full * 0.5)  # the batch discount


@pytest.mark.slow
def test_expired_batch_rows_are_resubmitted(fake, cli, tmp_path):
    fake.batch_expire = True
    out = tmp_path / "run"
    result = cli("run", _job(tmp_path, fake, n=4, batch_rounds=2), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    # Round 1 expires with 2 of 4 rows done (one of them a scripted 500); round 2 expires too.
    assert [b["status"] for b in run["batch"]["batches"]] == ["expired", "expired"]
    assert run["samples"]["failed"] > 0
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert any("expired before this row ran" in f["error"] for f in failed)
    fake.batch_expire = False
    result = cli("run", out)
    run = json.loads((out / "run.json").read_text())
    assert run["samples"]["failed"] == 0 and run["kept"] == 4


@pytest.mark.slow
def test_restart_polls_the_submitted_batch_instead_of_paying_again(fake, tmp_path):
    fake.batch_seconds = 2.0
    config = _job(tmp_path, fake, n=6)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)]
    env = {**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not fake.batches and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]  # killed mid-run, not exited
    assert len(fake.batches) == 1 and len(fake.files) == 1

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 6 and run["samples"]["failed"] == 0
    # The first batch was polled, not re-created; only its failed rows went in a second batch.
    assert len(fake.batches) == 2
    second = fake.batches["batch_2"]
    assert len(fake.files[second["input_file_id"]].splitlines()) == 2  # B0 and B4 failed once


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_a_batch_runs_exits_130_within_seconds(fake, tmp_path, presses):
    """The batch stays on the server; the next run polls it instead of paying again."""
    fake.batch_seconds = 600  # it will not finish while we wait
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distilforge", "generate", str(_job(tmp_path, fake)), "--output", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not fake.batches and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    started = time.monotonic()
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - started < 20  # the batch itself would take 600 s: Ctrl-C did not wait for it
    assert len(fake.batches) == 1


def test_a_cancelled_job_stops_polling_its_batch_within_seconds(fake, tmp_path, monkeypatch):
    from rich.console import Console

    from distilforge.pipeline.lifecycle import run_job
    from distilforge.pipeline.steps import RunControl
    from distilforge.schemas import load_config

    monkeypatch.setenv("DISTILFORGE_TEST_KEY", "sk-test")
    fake.batch_seconds = 600

    class Cancel(RunControl):
        def stop_reason(self):
            return "cancelled" if fake.batches else None

    started = time.monotonic()
    result = run_job(load_config(_job(tmp_path, fake)), tmp_path / "run", Cancel(), console=Console(quiet=True),
                     stages=("generate",))
    assert result.status == "cancelled" and time.monotonic() - started < 10
    assert len(fake.batches) == 1


@pytest.mark.slow
def test_batch_api_pays_only_for_the_seeds_the_pass_trains_on(fake, cli, tmp_path):
    """With `loop:`, the first pass holds the probe split apart: the Batch API must not pay for its seeds
    (it read the seed file itself, every row, and paid for the probe questions too)."""
    from distilforge.pipeline.build import main_selection
    from distilforge.pipeline.sources import SeedSource
    from distilforge.schemas import load_config

    config = _job(tmp_path, fake, n=20)
    data = json.loads(json.dumps(__import__("yaml").safe_load(config.read_text())))
    data["train"] = {"enabled": True}
    data["loop"] = {"rounds": 1, "probe_fraction": 0.3}
    config = write_config(tmp_path / "job.yaml", data)
    loaded = load_config(str(config))
    chosen = main_selection(loaded)
    held = {seed.question.split(" ")[0] for seed in SeedSource(loaded).read() if not chosen(seed.seed_id)}
    assert held  # the probe split: 30% of 20 seeds
    out = tmp_path / "run"
    result = cli("generate", config, "--output", out, expect=0)
    assert result.exit_code == 0, result.output
    asked = {r["body"]["messages"][-1]["content"].split(" ")[0] for r in fake.requests}
    assert asked and not asked & held, (asked, held)
    run = json.loads((out / "run.json").read_text())
    assert run["batch"]["rows_ok"] == len(asked)
    assert not run.get("rounds")  # `generate` is the data stage: no targeted rounds (they probe a trained student)
