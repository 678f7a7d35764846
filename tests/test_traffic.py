"""Teacher traffic at scale: rate limits, failure storms, budget caps, Ctrl-C, vLLM replicas."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import datasets
import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour, FakeOpenAI

from distilforge.core.journal import JournalReader
from distilforge.teachers.ratelimit import RateLimiter, parse_reset


def _seeds(tmp_path, n, prefix="Q", *, distinct=False):
    """n seeds; all answer 1 (what the fake's default says) unless `distinct`: then Qi answers i + 1."""
    return write_jsonl(tmp_path / "seeds.jsonl", [
        {"question": f"{prefix}{i}: what is {i if distinct else 0} + 1?", "answer": f"#### {i + 1 if distinct else 1}"}
        for i in range(n)
    ])


def _accounted(out, run, expected):
    """Every seed x sample appears once in kept+rejected, or is failed / not sent."""
    pairs = []
    for ds in (load_kept(out), datasets.load_from_disk(str(out / "rejected"))):
        pairs += list(zip(ds["seed_id"], ds["sample_index"], strict=True))
    assert len(pairs) == len(set(pairs)), "a sample appears twice"
    assert len(pairs) + run["samples"]["failed"] + run["samples"]["not_sent"] == expected
    return pairs


@pytest.mark.slow
def test_rpm_limit_is_sustained_without_a_429_storm(fake, cli, tmp_path):
    fake.rpm_limit = 1200  # 20 requests/s, enforced by the server
    fake.default = Behaviour(["Add one.\nThe answer is 1."])
    data = api_config(_seeds(tmp_path, 60), fake.base_url)
    data["teacher"].update(rpm=1200, max_concurrency=16)
    data["generation"]["samples_per_seed"] = 1
    started = time.monotonic()
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert fake.rejected_429 <= 1 and run["requests"]["rate_limited"] == fake.rejected_429
    assert len(fake.requests) - fake.rejected_429 == 60
    # 20 go at once (one second of the limit), the other 40 at 20/s.
    assert elapsed >= 1.8


@pytest.mark.slow
def test_without_a_client_limit_429s_cool_down_the_endpoint(fake, cli, tmp_path):
    fake.rpm_limit = 600
    fake.default = Behaviour(["Add one.\nThe answer is 1."])
    data = api_config(_seeds(tmp_path, 30), fake.base_url)
    data["teacher"].update(max_concurrency=16, retry={"max_attempts": 20, "second_pass_after_s": 0.2})
    data["generation"]["samples_per_seed"] = 1
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["samples"]["failed"] == 0 and run["requests"]["succeeded"] == 30
    assert 0 < run["requests"]["rate_limited"] < 60  # the cool-down stops a storm of retries


@pytest.mark.slow
def test_failure_storm_loses_and_duplicates_nothing(fake, cli, tmp_path):
    rng = random.Random(7)
    n = 40
    fake.retry_after = 0.01
    fake.script = {
        f"S{i}:": Behaviour([f"{i} + 1 = {i + 1}.\nThe answer is {i + 1}.", f"So {i + 1}.\n#### {i + 1}"],
                            failures=rng.choices(["429", "500", "503", "malformed", "drop", "slow"], k=rng.randint(0, 3)))
        for i in range(n)
    }
    data = api_config(_seeds(tmp_path, n, prefix="S", distinct=True), fake.base_url)
    data["teacher"].update(retry={"max_attempts": 6, "second_pass_after_s": 0.2}, timeout=0.5, max_concurrency=8)
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["samples"]["failed"] == 0
    assert run["kept"] == 2 * n and run["rejected"] == {}
    _accounted(out, run, 2 * n)
    injected = sum(len(b.failures) for b in fake.script.values())
    assert run["requests"]["retried"] == injected


def test_budget_cap_is_never_passed(fake, cli, tmp_path):
    rng = random.Random(3)
    n = 30
    fake.script = {f"Q{i}:": Behaviour([" ".join(["word"] * rng.randint(5, 400)) + f"\nThe answer is {i + 1}."])
                   for i in range(n)}
    data = api_config(_seeds(tmp_path, n, distinct=True), fake.base_url)
    data["teacher"]["params"]["max_tokens"] = 200
    data["teacher"]["max_concurrency"] = 4
    data["budget"] = {"prices": {"input_per_million": 1000.0, "output_per_million": 1000.0}, "max_usd": 2.0}
    out = tmp_path / "run"
    config = write_config(tmp_path / "job.yaml", data)
    result = cli("run", config, "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["stopped"] == "budget"
    assert 0 < run["cost_usd"] <= 2.0 and run["budget"]["spent_usd_total"] <= 2.0
    assert run["samples"]["not_sent"] > 0
    _accounted(out, run, 2 * n)
    totals = JournalReader(out).totals()
    assert totals.answered_usd <= 2.0 and totals.orphans == 0

    # A higher cap on the same folder pays only for the rest, and counts what was spent.
    sent_before = len(fake.requests)
    result = cli("run", config, "--output", out, "--set", "budget.max_usd=1000")
    assert result.exit_code == 0, result.output
    run2 = json.loads((out / "run.json").read_text())
    assert run2["stopped"] == "done" and run2["samples"]["not_sent"] == 0
    assert len(fake.requests) - sent_before == n - run["requests"]["succeeded"]
    # cost_usd is the whole folder's; this command's share is apart.
    assert run2["budget"]["spent_usd_total"] == pytest.approx(run2["cost_usd"])
    assert run2["cost_usd"] == pytest.approx(run["cost_usd"] + run2["this_invocation"]["cost_usd"])


def test_estimate_bounds_the_real_cost(fake, cli, tmp_path):
    fake.default = Behaviour([" ".join(["step"] * 300)])
    data = api_config(_seeds(tmp_path, 10), fake.base_url)
    data["teacher"]["model"] = "gpt-4o-mini"  # priced from the built-in table
    data["teacher"]["params"]["max_tokens"] = 100
    config = write_config(tmp_path / "job.yaml", data)
    result = cli("estimate", config, "--json")
    assert result.exit_code == 0, result.output
    est = json.loads(result.output)
    assert est["prices"] == {"input_per_million": 0.15, "output_per_million": 0.6, "cached_input_per_million": 0.075}
    assert est["requests"] == 10 and est["samples"] == 20
    assert est["expected"]["usd"] < est["worst_case"]["usd"]
    assert fake.requests == []  # nothing was sent
    cli("run", config, "--output", tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["cost_usd"] <= est["worst_case"]["usd"]


def test_max_usd_without_a_price_is_refused(fake, cli, tmp_path):
    data = api_config(_seeds(tmp_path, 2), fake.base_url)
    data["budget"] = {"max_usd": 5}
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2 and "budget.prices" in result.output and fake.requests == []


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(fake, tmp_path):
    n = 16
    fake.latency = (0.3, 0.35)
    fake.default = Behaviour(["Add one.\nThe answer is 1."])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"Q{i}: 0 + 1?", "answer": "#### 1"} for i in range(n)])
    data = api_config(seeds, fake.base_url)
    data["teacher"]["max_concurrency"] = 2
    data["generation"]["samples_per_seed"] = 1
    config = write_config(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)]
    env = {**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fake.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    run = json.loads((out / "run.json").read_text())
    assert run["stopped"] == "interrupted" and 0 < run["kept"] < n
    assert run["requests"]["sent"] == run["requests"]["succeeded"]  # in-flight ones finished
    assert JournalReader(out).totals().orphans == 0
    assert len(load_kept(out)) == run["kept"]

    sent_before = len(fake.requests)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run2 = json.loads((out / "run.json").read_text())
    assert run2["kept"] == n and run2["stopped"] == "done"
    assert len(fake.requests) - sent_before == n - run["kept"]


@pytest.fixture
def replicas():
    servers = [FakeOpenAI(latency=(0.02, 0.03), default=Behaviour(["Add one.\nThe answer is 1."])) for _ in range(2)]
    urls = [s.start() for s in servers]
    yield servers, urls
    for s in servers:
        s.stop()


def test_vllm_replicas_share_the_load(replicas, cli, tmp_path):
    servers, urls = replicas
    data = api_config(_seeds(tmp_path, 40), urls[0])
    data["teacher"].update(backend="vllm", base_url=urls, api_key_env=None, max_concurrency=8)
    data["generation"]["samples_per_seed"] = 1
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    counts = [len(s.requests) for s in servers]
    assert sum(counts) == 40 and min(counts) >= 12, counts


def test_vllm_sick_replica_is_avoided(replicas, cli, tmp_path):
    servers, urls = replicas
    servers[1].default = Behaviour(always="503")
    data = api_config(_seeds(tmp_path, 30), urls[0])
    data["teacher"].update(backend="vllm", base_url=urls, api_key_env=None, max_concurrency=4,
                           retry={"max_attempts": 4, "second_pass_after_s": 0.2})
    data["generation"]["samples_per_seed"] = 1
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["samples"]["failed"] == 0 and run["kept"] == 30
    assert len(servers[1].requests) < 10  # after failing, it sits out


def test_vllm_unreachable_or_wrong_model_is_a_clear_error(fake, cli, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    data = api_config(_seeds(tmp_path, 2), closed)
    data["teacher"].update(backend="vllm", api_key_env=None)
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2 and "unreachable" in result.output
    data["teacher"].update(base_url=fake.base_url, model="Qwen/Qwen2.5-7B-Instruct")
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run", expect=2)
    # Named by its configured URL; what the foreign server answered is never echoed.
    assert result.exit_code == 2 and "is not served" in result.output and "fake-teacher" not in result.output


def test_vllm_offline_without_vllm_is_a_clear_error(cli, tmp_path):
    pytest.importorskip("torch")
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    data = api_config(_seeds(tmp_path, 2), "http://unused")
    data["teacher"].update(backend="vllm-offline", model="Qwen/Qwen2.5-0.5B-Instruct", base_url=None)
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2 and "pip install 'distilforge[vllm]'" in result.output


def test_rate_limiter_rules():
    limiter = RateLimiter(rpm=600, tpm=60_000)
    assert limiter.requests.capacity == pytest.approx(9.7) and limiter.tokens.capacity == pytest.approx(970)
    limiter.observe_headers({"x-ratelimit-limit-requests": "6000"})  # higher: ignored
    assert limiter.requests.per_minute == 600
    limiter.observe_headers({"x-ratelimit-limit-requests": "120", "x-ratelimit-limit-tokens": "6000"})
    assert limiter.requests.per_minute == 120 and limiter.tokens.capacity == pytest.approx(97)
    limiter.on_rate_limited(2.0)
    assert limiter.cooldown_until - time.monotonic() == pytest.approx(2.0, abs=0.1)
    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == 0.02 and parse_reset("1.5s") == 1.5
