"""The openai teacher through the CLI against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

SEEDS = [
    {"question": "Q-correct: Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "36*.5=18\n#### 18"},
    {"question": "Q-wrong: 2 + 2?", "answer": "#### 4"},
    {"question": "Q-truncated: 10 / 2?", "answer": "#### 5"},
    {"question": "Q-malformed: 3 * 3?", "answer": "#### 9"},
    {"question": "Q-429: 6 + 1?", "answer": "#### 7"},
    {"question": "Q-500: 4 * 2?", "answer": "#### 8"},
    {"question": "Q-badbody: 5 + 5?", "answer": "#### 10"},
    {"question": "Q-down: 1 + 1?", "answer": "#### 2"},
    {"question": "Q-refuse: 9 - 3?", "answer": "#### 6"},
    {"question": "Q-dup: 1,000 + 234?", "answer": "#### 1,234"},
    {"question": "Q-boxed: half of one?", "answer": "#### 0.5"},
    {"question": "Q-yesno: Is a whale a mammal?", "answer": True},
]

SCRIPT = {
    "Q-correct": Behaviour(["3 dozen is 36 eggs. 36 * $0.50 = $18.\nThe answer is $18.",
                            "36 eggs times 0.5 dollars each.\n#### 18.00"]),
    "Q-wrong": Behaviour(["2 + 2 = 5.\nThe answer is 5.", "Two and two make four.\nThe answer is 4."]),
    "Q-truncated": Behaviour(["10 divided by 2 is", "Ten over two"], finish_reason="length"),
    "Q-malformed": Behaviour(["Three times three, I think, is a lot.", "asdf qwerty"]),
    "Q-429": Behaviour(["6 + 1 = 7.\nThe answer is 7."], failures=["429"]),
    "Q-500": Behaviour(["4 * 2 = 8.\nThe answer is 8 apples."], failures=["500"]),
    "Q-badbody": Behaviour(["5 + 5 = 10.\nFinal answer: 10"], failures=["malformed"]),
    "Q-down": Behaviour(always="503"),
    "Q-refuse": Behaviour(["I'm sorry, but I can't help with that.", ""]),
    "Q-dup": Behaviour(["1000 + 234 = 1234.\nThe answer is 1,234."]),
    "Q-boxed": Behaviour(["Half of one is one over two: $\\boxed{\\frac{1}{2}}$", "One half is 0.5.\nThe answer is 0.5"]),
    "Q-yesno": Behaviour(["Whales breathe air and nurse their young.\nThe answer is yes.",
                          "Whales live in water like fish.\nThe answer is no."]),
}


def _run(fake, cli, tmp_path: Path, *extra: str):
    fake.script = dict(SCRIPT)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url))
    out = tmp_path / "run"
    result = cli("run", config, "--output", out, *extra)
    return result, out


def test_mixed_answers_keep_exactly_the_correct_complete_ones(fake, cli, tmp_path):
    result, out = _run(fake, cli, tmp_path)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())

    kept = load_kept(out)
    kept_pairs = sorted((r["question"].split(":")[0], r["answer"]) for r in kept)
    assert kept_pairs == [
        ("Q-429", "7"),
        ("Q-500", "8"),
        ("Q-badbody", "10"),
        ("Q-boxed", "1/2"),
        ("Q-boxed", "1/2"),
        ("Q-correct", "18"),
        ("Q-correct", "18"),
        ("Q-dup", "1234"),
        ("Q-wrong", "4"),
        ("Q-yesno", "yes"),
    ]
    assert run["kept"] == 10
    # Q-429/Q-500/Q-badbody serve one text for both samples: the second is a duplicate.
    assert run["rejected"] == {
        "truncated": 2, "unparseable": 2, "wrong_answer": 2, "refusal": 1, "empty": 1, "duplicate": 4,
    }
    # Q-down never answers: its 2 samples fail after 3 attempts, then 3 more in the second pass at the
    # end of the run, and are reported failed.
    assert run["samples"]["failed"] == 2
    assert run["requests"] == {
        "sent": 12, "succeeded": 11, "failed": 1,
        "attempts": 11 + 3 + 3 + 3, "retried": 3 + 2 + 3, "rate_limited": 1,
        "usage_missing": 0, "unknown_outcome": 1,  # the unreadable 200 may have been billed
        "cached": 0,
        "errors": {"429": 1, "500": 1, "malformed": 1, "503": 6},
    }
    # Every seed x sample ends up kept, rejected or failed, exactly once.
    assert run["kept"] + sum(run["rejected"].values()) + run["samples"]["failed"] == len(SEEDS) * 2
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["sample_index"] for f in failed] == [0, 1] and "503" in failed[0]["error"]

    # Usage is recorded from the responses.
    sent_ok = [r for r in fake.requests if "Q-down" not in r["body"]["messages"][-1]["content"]]
    assert run["tokens"]["prompt"] > 0 and run["tokens"]["completion"] > 0
    assert all(r["body"]["n"] == 2 for r in sent_ok)  # n samples in one request
    assert run["wall_seconds"] > 0 and run["total_seconds"] >= run["wall_seconds"]

    row = kept[0]
    assert row["messages"][0]["role"] == "user" and row["messages"][-1]["role"] == "assistant"
    assert row["question"] in row["messages"][0]["content"]  # the question goes in verbatim
    assert row["teacher_model"] == "fake-teacher" and row["gold"] is not None

    rejected = datasets.load_from_disk(str(out / "rejected"))
    assert set(rejected["reject_reason"]) == {"truncated", "unparseable", "wrong_answer", "refusal", "empty", "duplicate"}
    assert (out / "parquet" / "train.parquet").exists() and (out / "parquet" / "validation.parquet").exists()


@pytest.mark.slow
def test_secret_never_lands_in_run_files(fake, cli, tmp_path):
    fake.require_key = "sk-test-secret-123"
    result, out = _run(fake, cli, tmp_path)
    assert result.exit_code == 0, result.output
    assert fake.requests[0]["auth"] == "Bearer sk-test-secret-123"
    for path in out.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-123" not in path.read_bytes(), path
    assert "sk-test-secret-123" not in result.output


@pytest.mark.slow
def test_rerun_resumes_from_the_journal_and_pays_only_for_failures(fake, cli, tmp_path):
    result, out = _run(fake, cli, tmp_path)
    assert result.exit_code == 0
    first = len(fake.requests)
    fake.script["Q-down"] = Behaviour(["1 + 1 = 2.\nThe answer is 2."])  # the endpoint recovered
    result = cli("generate", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    new_requests = fake.requests[first:]
    assert [r["body"]["messages"][-1]["content"].split(":")[0] for r in new_requests] == ["Q-down"]
    assert run["samples"]["from_journal"] == len(SEEDS) * 2 - 2
    assert run["samples"]["failed"] == 0 and run["kept"] == 11


@pytest.mark.slow
def test_server_without_n_gets_one_request_per_sample(fake, cli, tmp_path):
    fake.supports_n = False  # ignores n and returns one choice
    result, out = _run(fake, cli, tmp_path)
    assert result.exit_code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] + sum(run["rejected"].values()) + run["samples"]["failed"] == len(SEEDS) * 2
    assert run["kept"] == 10


def test_non_retryable_4xx_is_not_retried_and_a_run_with_no_answer_fails(fake, cli, tmp_path):
    fake.script = {"Q-correct": Behaviour(always="400")}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS[:1])
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url))
    result = cli("run", config, "--output", tmp_path / "run", expect=1)
    # Every request failed and nothing came from the journal: not a completed run.
    assert result.exit_code == 1 and "400" in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(fake.requests) == 1
    assert run["status"] == "failed" and "400" in run["error"]
    assert run["requests"]["failed"] == 1 and run["samples"]["failed"] == 2


def test_a_run_with_some_answers_completes_with_its_failures_listed(fake, cli, tmp_path):
    fake.script = {"Q-correct": Behaviour(always="400"), "Q-boxed": Behaviour(["So \\boxed{\\frac{1}{2}}"])}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [SEEDS[0], next(s for s in SEEDS if "Q-boxed" in s["question"])])
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url))
    result = cli("run", config, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "completed" and run["samples"]["failed"] == 2
    failed = [json.loads(line) for line in (tmp_path / "run" / "failed.jsonl").read_text().splitlines()]
    assert len(failed) == 2 and all("400" in f["error"] for f in failed)


def test_missing_api_key_is_a_clear_error(fake, cli, tmp_path, monkeypatch):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS[:1])
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url))
    monkeypatch.delenv("DISTILFORGE_TEST_KEY")
    result = cli("run", config, "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2
    assert "DISTILFORGE_TEST_KEY is not set" in result.output
    assert fake.requests == [] and not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_at_most_max_concurrency_requests_in_flight(fake, cli, tmp_path):
    fake.latency = (0.05, 0.1)
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"Sum {i}: 1 + 2?", "answer": "#### 3"} for i in range(24)])
    data = api_config(seeds, fake.base_url)
    data["teacher"]["max_concurrency"] = 3
    data["teacher"]["supports_n"] = False  # 2 requests per seed, so seeds alone would not bound it
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(fake.requests) == 48
    assert fake.max_in_flight == 3


@pytest.mark.slow
def test_dropped_connection_and_timeout_are_retried(fake, cli, tmp_path):
    fake.script = {
        "Q-drop": Behaviour(["1 + 1 = 2.\nThe answer is 2."], failures=["drop"]),
        "Q-slow": Behaviour(["2 + 2 = 4.\nThe answer is 4."], failures=["slow"]),
    }
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": "Q-drop: 1 + 1?", "answer": "#### 2"},
                                                   {"question": "Q-slow: 2 + 2?", "answer": "#### 4"}])
    data = api_config(seeds, fake.base_url)
    data["teacher"]["timeout"] = 0.5
    data["generation"]["samples_per_seed"] = 1
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["kept"] == 2
    # A socket dropped after sending and a timeout are told apart; both are retried and, since the
    # server may have billed them, charged at their worst case.
    errors = run["requests"]["errors"]
    assert errors == {"dropped": 1, "timeout": 1}
    assert run["requests"]["unknown_outcome"] == 2
    assert run["requests"]["retried"] == 2
