"""The CLI against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python's `llama_cpp.server`).

What that server does (llama-cpp-python 0.3.36, probed by hand; see tests_compat/README.md):
- every answer carries `usage`; the `model` field echoes whatever model name was asked for (any name
  is accepted, nothing is checked against the alias);
- `n` is ignored: one choice per request whatever n says, with status 200;
- `response_format: {"type": "json_schema", ...}` is answered 500 in milliseconds, the same way every
  time: a request validation error ("Input should be 'text' or 'json_object'") reported as
  `{"error": {"type": "internal_server_error", ...}}`;
- `response_format: {"type": "json_object", "schema": {...}}` constrains the output to the schema
  (minimum/maximum and required keys included); `{"type": "json_object"}` alone only forces JSON;
- requests are served one at a time (queued behind a lock); there is no /health, /v1/models works.

Each test asserts what the README promises a user. Some depend on behaviour not implemented yet
(structured-output negotiation, `teacher.retry`, per-stage accounting in run.json): acceptance tests.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from conftest import (
    GSM8K,
    MODEL_ID,
    SEED_TASKS,
    cot_job,
    describe,
    failed_lines,
    journal_responses,
    kept_rows,
    read_run,
    rejected_rows,
    run_cli,
    start_cli,
    teacher_config,
    wait_for,
    write_job,
)


def accounted(run_dir: Path) -> tuple[int, int, int]:
    """(kept, rejected, failed): every requested sample must land in exactly one of them."""
    return len(kept_rows(run_dir)), len(rejected_rows(run_dir)), len(failed_lines(run_dir))


def samples_by_seed(run_dir: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for row in kept_rows(run_dir) + rejected_rows(run_dir):
        seen[row["seed_id"]] += 1
    for line in failed_lines(run_dir):  # one line per failed sample
        seen[line["seed_id"]] += 1
    return seen


# -- a. plain chain-of-thought ----------------------------------------------------------------------------


def test_cot_usage_matches_server_and_every_sample_is_accounted_for(proxy, tmp_path):
    n_seeds = 8
    config = write_job(tmp_path / "job.yaml", cot_job(proxy.base_url, limit=n_seeds))
    out = tmp_path / "run"
    result = run_cli("run", config, "--output", out)
    assert result.returncode == 0, describe(result)

    run = read_run(out)
    chats = proxy.chats()
    answered = [e for e in chats if e.status == 200]
    assert answered and all(e.usage for e in answered), "llama.cpp reports usage on every answer"
    server_prompt = sum(e.usage["prompt_tokens"] for e in answered)
    server_completion = sum(e.usage["completion_tokens"] for e in answered)
    assert run["tokens"]["prompt"] == server_prompt > 0
    assert run["tokens"]["completion"] == server_completion > 0
    assert run["cost_usd"] == pytest.approx((server_prompt + server_completion) / 1e6, abs=2e-6)
    assert run["requests"]["succeeded"] == len(answered)

    kept, rejected, failed = accounted(out)
    assert kept + rejected + failed == n_seeds * 1, (kept, rejected, failed)
    assert kept == run["kept"] and rejected == sum(run["rejected"].values())
    rows = kept_rows(out) + rejected_rows(out)
    assert {r["teacher_model"] for r in rows} == {MODEL_ID}

    # Contract: a response without usage is counted (and priced at worst case), never silently free.
    assert run["requests"].get("usage_missing") == 0, "run.json requests.usage_missing (new key) should be 0"


# -- b. `n` is ignored by the server ------------------------------------------------------------------------


def test_n_ignored_still_gives_every_sample_and_estimate_bounds_cost(proxy, tmp_path):
    n_seeds, k = 4, 3
    data = cot_job(proxy.base_url, limit=n_seeds, samples=k, name="compat-n")
    assert data["teacher"].get("supports_n", True) is True  # the default: distilforge sends n
    config = write_job(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    result = run_cli("run", config, "--output", out)
    assert result.returncode == 0, describe(result)

    chats = proxy.chats()
    with_n = [e for e in chats if e.status == 200 and (e.request or {}).get("n", 1) > 1]
    # What this test is about: the server answers n > 1 with a single choice.
    assert all(len(e.choices) == 1 for e in chats if e.status == 200)
    assert with_n or len(chats) >= n_seeds * k, "every sample was asked for, with n or one by one"

    kept, rejected, failed = accounted(out)
    assert kept + rejected + failed == n_seeds * k, (kept, rejected, failed)
    assert failed == 0
    per_seed = samples_by_seed(out)
    assert len(per_seed) == n_seeds and set(per_seed.values()) == {k}, per_seed

    run = read_run(out)
    answered = [e for e in chats if e.status == 200]
    assert run["tokens"]["prompt"] == sum(e.usage["prompt_tokens"] for e in answered)
    assert run["tokens"]["completion"] == sum(e.usage["completion_tokens"] for e in answered)

    est = run_cli("estimate", config, "--json", timeout=300)
    assert est.returncode == 0, describe(est)
    worst = json.loads(est.stdout)["worst_case"]["usd"]
    assert worst >= run["cost_usd"], (
        f"estimate's worst case ${worst} is below the real cost ${run['cost_usd']}: "
        "a server that ignores n is billed for the prompt once per sample"
    )
    # The same run with every sample at max_tokens (the worst case's own assumption) must stay under it too:
    # the prompts really sent (once per sample here) plus max_tokens per sample, at $1/M each way.
    max_tokens = data["teacher"]["params"]["max_tokens"]
    could_have_cost = (run["tokens"]["prompt"] + n_seeds * k * max_tokens) / 1e6
    assert worst >= could_have_cost - 1e-6, (
        f"estimate's worst case ${worst} < ${could_have_cost:.6f}, what this run costs if every sample hits "
        f"max_tokens: the server ignored n, so each of the {n_seeds * k} samples re-sent its prompt"
    )


# -- c. LLM judge with structured output ------------------------------------------------------------------


def test_judge_negotiates_structured_output_once(proxy, llama_server, tmp_path):
    n_seeds = 8
    # `instruct` mode on the GSM8K questions: no gold to match, so records reach the judge even from a 135M
    # teacher (only truncated/empty/refusal/duplicate come first).
    data = {
        "name": "compat-judge",
        "seeds": {"path": str(GSM8K), "fields": {"question": "question", "answer": None}, "limit": n_seeds},
        "teacher": teacher_config(proxy.base_url, max_tokens=256),
        "generation": {"mode": "instruct", "samples_per_seed": 1},
        "budget": {"prices": {"input_per_million": 1, "output_per_million": 1}},
        "filters": [{"name": "judge", "min_score": 1,
                     "teacher": teacher_config(proxy.base_url, max_tokens=128)}],
    }
    config = write_job(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    mark = llama_server.log_mark()
    result = run_cli("run", config, "--output", out)
    assert result.returncode == 0, describe(result)

    run = read_run(out)
    steps = [f["name"] for f in run["filters"]]
    assert "judge" in steps, steps
    j = steps.index("judge")
    judge = run["filters"][j]
    reaching = run["filters"][j - 1]["out"]
    assert judge["in"] == reaching > 0, run["filters"]

    chats = proxy.chats()
    all_500 = [e for e in chats if e.status == 500]
    schema_500 = [e for e in chats if e.response_format_type == "json_schema" and e.status == 500]
    traffic = f"{len(chats)} requests, {len(all_500)} answered 500 ({len(schema_500)} of them for json_schema)"

    # min_score 1: every readable verdict passes, so a kept row proves the judge's answers are read.
    assert judge["out"] >= 1, f"no readable verdict after {traffic}: {judge['examples']}"
    kept = kept_rows(out)
    assert kept and all(r.get("judge_score") is not None for r in kept)
    kept_n, rejected_n, failed_n = accounted(out)
    assert kept_n + rejected_n + failed_n == n_seeds

    # An error that will not change on retry is not retried: json_schema is tried once per endpoint.
    assert len(all_500) == llama_server.statuses_since(mark).count(500)  # the proxy saw what the server logged
    assert len(schema_500) <= 1 and len(all_500) <= 1, traffic

    # Contract: per-stage accounting in run.json.
    stages = run.get("stages", {})
    assert stages.get("judge", {}).get("requests", {}).get("sent", 0) > 0, f"run.json stages: {stages}"
    by_stage = run.get("cost_by_stage", {})
    assert {"generate", "judge"} <= set(by_stage), f"run.json cost_by_stage: {by_stage}"
    assert sum(by_stage.values()) == pytest.approx(run["cost_usd"], abs=2e-6)


# -- d. self-instruct with structured output ----------------------------------------------------------------


def test_self_instruct_keeps_something_or_fails_clearly(proxy, llama_server, tmp_path):
    data = {
        "name": "compat-self-instruct",
        "seeds": {"path": str(SEED_TASKS), "fields": {"question": "instruction", "answer": None}},
        "teacher": teacher_config(proxy.base_url, max_tokens=192),
        "generation": {"mode": "self-instruct", "target_count": 4, "proposals_per_round": 4},
        "budget": {"prices": {"input_per_million": 1, "output_per_million": 1}},
    }
    config = write_job(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    mark = llama_server.log_mark()
    result = run_cli("run", config, "--output", out)

    chats = proxy.chats()
    all_500 = [e for e in chats if e.status == 500]
    schema_500 = [e for e in chats if e.response_format_type == "json_schema" and e.status == 500]
    traffic = f"{len(chats)} requests, {len(all_500)} answered 500 ({len(schema_500)} of them for json_schema)"

    # What the user is promised: instructions, or a clear failure; never exit 0 with nothing kept.
    if result.returncode == 0:
        run = read_run(out)
        assert run["kept"] >= 1, (
            f"exit 0 with 0 instructions kept after {traffic}; rejected {run['rejected']}, "
            f"{len(failed_lines(out))} failed"
        )
        assert len(kept_rows(out)) == run["kept"]
    else:
        assert result.returncode == 1, describe(result)
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error:"), describe(result)
        assert "Traceback" not in result.stderr, describe(result)

    # An error that will not change on retry is not retried: json_schema is tried once per endpoint.
    assert len(all_500) == llama_server.statuses_since(mark).count(500)
    assert len(schema_500) <= 1 and len(all_500) <= 1, traffic


# -- e. kill and resume -----------------------------------------------------------------------------------------


def test_server_killed_and_restarted_mid_run_loses_nothing(llama_server, restart_server, tmp_path):
    n_seeds = 12
    data = cot_job(llama_server.base_url, limit=n_seeds, name="compat-server-kill", max_concurrency=2)
    data["teacher"]["retry"] = {"max_attempts": 6, "max_wait_s": 30}  # new config key (contract)
    config = write_job(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    log = tmp_path / "cli.log"
    proc = start_cli("run", config, "--output", out, log=log)
    try:
        wait_for(lambda: journal_responses(out) >= 3, proc, timeout=300, log=log)
        done_at_kill = journal_responses(out)
        down = restart_server(1.0)  # SIGKILL, 1 s down, then start again (about 1 s) on the same port
        assert down < 10
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text("utf-8", "replace")
    assert done_at_kill < n_seeds, "the server should have been killed part-way through"
    assert proc.returncode == 0, output[-4000:]
    run = read_run(out)
    assert run["requests"]["retried"] >= 1, f"the client never saw the outage: {run['requests']}"
    kept, rejected, failed = accounted(out)
    assert failed == 0, f"a restart of {down:.1f} s lost {failed} samples: {failed_lines(out)[:2]}"
    assert kept + rejected == n_seeds


def test_client_killed_mid_run_resumes_from_journal(llama_server, tmp_path):
    n_seeds = 12
    data = cot_job(llama_server.base_url, limit=n_seeds, name="compat-client-kill", max_concurrency=2)
    config = write_job(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    log = tmp_path / "cli.log"
    proc = start_cli("run", config, "--output", out, log=log)
    try:
        wait_for(lambda: journal_responses(out) >= 4, proc, timeout=300, log=log)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text("utf-8", "replace")[-3000:]  # killed, not exited
    committed = journal_responses(out)
    assert 4 <= committed < n_seeds, "the CLI should have been killed part-way through"

    result = run_cli("run", config, "--output", out)
    assert result.returncode == 0, describe(result)
    run = read_run(out)
    assert run["samples"]["from_journal"] >= committed > 0
    assert run["samples"]["from_journal"] + run["samples"]["new"] + run["samples"]["failed"] == n_seeds
    kept, rejected, failed = accounted(out)
    assert kept + rejected + failed == n_seeds
