"""The response cache: the same job run into another folder pays the teacher nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

SEEDS = [{"question": f"Q{i}: what is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(1, 7)]
PRICES = {"input_per_million": 1.0, "output_per_million": 2.0}


def _config(fake, tmp_path: Path, **overrides):
    fake.script = {f"Q{i}:": Behaviour([f"{i} + {i} = {2 * i}.\nThe answer is {2 * i}.",
                                        f"Adding {i} twice gives {2 * i}.\nThe answer is {2 * i}.",
                                        f"Twice {i} is {2 * i}.\nThe answer is {2 * i}."])
                   for i in range(1, 7)}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    data = api_config(seeds, fake.base_url, budget__prices=PRICES, **overrides)
    return write_config(tmp_path / "job.yaml", data)


def _run(cli, config: Path, out: Path, *extra: str) -> dict:
    result = cli("run", config, "--output", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text()) | {"_output": result.output}


def test_second_run_into_another_folder_is_billed_nothing(fake, cli, tmp_path):
    config = _config(fake, tmp_path)
    first = _run(cli, config, tmp_path / "a")
    billed = len(fake.bills)
    assert billed > 0 and first["requests"]["cached"] == 0 and first["cost_usd"] > 0

    second = _run(cli, config, tmp_path / "b")
    assert fake.ledger(billed) == []  # the server billed the second run nothing
    assert second["requests"]["sent"] == 0
    assert second["requests"]["cached"] == second["samples"]["cached"] == 12
    assert second["cost_usd"] == 0
    assert "response cache" in second["_output"]
    rows = lambda out: sorted((r["seed_id"], r["rationale"]) for r in load_kept(out))  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")

    # The journal recorded the cached answers: a rerun on the same folder replays them from there.
    again = _run(cli, config, tmp_path / "b")
    assert fake.ledger(billed) == []
    assert again["samples"]["from_journal"] == 12 and again["requests"]["cached"] == 0


def test_sampled_requests_are_cached_by_sample_index(fake, cli, tmp_path):
    config = _config(fake, tmp_path)
    _run(cli, config, tmp_path / "a")  # samples 0 and 1 of every seed, temperature 0.7
    billed = len(fake.bills)
    more = _run(cli, config, tmp_path / "b", "--set", "generation.samples_per_seed=3")
    new = fake.ledger(billed)
    assert sum(b.n for b in new) == 6  # only sample 2 of each seed was asked for
    assert more["requests"]["cached"] == 12 and more["samples"]["new"] == 6


def test_cache_off_for_a_process_or_a_job(fake, cli, tmp_path, monkeypatch):
    config = _config(fake, tmp_path)
    _run(cli, config, tmp_path / "a")
    billed = len(fake.bills)
    off = _run(cli, config, tmp_path / "b", "--set", "teacher.cache=false")
    assert sum(b.n for b in fake.ledger(billed)) == 12 and off["requests"]["cached"] == 0
    billed = len(fake.bills)
    monkeypatch.setenv("DISTILFORGE_RESPONSE_CACHE", "off")
    _run(cli, config, tmp_path / "c")
    assert sum(b.n for b in fake.ledger(billed)) == 12


def test_changed_params_or_endpoint_miss_the_cache(fake, cli, tmp_path):
    config = _config(fake, tmp_path)
    _run(cli, config, tmp_path / "a")
    billed = len(fake.bills)
    _run(cli, config, tmp_path / "b", "--set", "teacher.params.temperature=0.9")
    assert sum(b.n for b in fake.ledger(billed)) == 12


def test_cache_stats_and_prune_leave_the_model_cache_alone(fake, cli, tmp_path, monkeypatch):
    root = tmp_path / "cache-root"
    monkeypatch.setenv("DISTILFORGE_CACHE", str(root))
    monkeypatch.delenv("DISTILFORGE_RESPONSE_CACHE")
    model_file = root / "models" / "student" / "model.safetensors"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"weights")
    config = _config(fake, tmp_path)
    _run(cli, config, tmp_path / "a")
    assert (root / "responses.sqlite").is_file()

    stats = cli("cache", "stats", "--json")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output)["entries"] == 12
    pruned = cli("cache", "prune", "--max-size", "1KB")
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(cli("cache", "stats", "--json").output)["entries"] < 12
    everything = cli("cache", "prune", "--all")
    assert everything.exit_code == 0 and "removed" in everything.output
    assert json.loads(cli("cache", "stats", "--json").output)["entries"] == 0
    assert model_file.read_bytes() == b"weights"
    bad = cli("cache", "prune", "--max-size", "lots", expect=2)
    assert bad.exit_code == 2 and "--max-size" in bad.output


_WRITER = """
import sys
from distilforge.schemas.records import Completion
from distilforge.core.response_cache import ResponseCache
cache = ResponseCache(__import__("pathlib").Path(sys.argv[1]))
for i in range(150):
    cache.put([(f"{sys.argv[2]}-{i}", Completion("x" * 50, "stop"), 1, 2, "m"), (f"shared-{i}", Completion("s", "stop"), 1, 1, "m")])
    cache.lookup([f"shared-{i}"])
cache.close()
"""


def test_concurrent_processes_share_one_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name], stderr=subprocess.PIPE)
             for name in ("a", "b", "c")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    from distilforge.core.response_cache import ResponseCache

    cache = ResponseCache(path)
    assert cache.stats()["entries"] == 3 * 150 + 150
    cache.close()


def test_service_caches_per_owner(tmp_path, monkeypatch):
    from distilforge.core.response_cache import owner_cache_path

    monkeypatch.setenv("DISTILFORGE_RESPONSE_CACHE", str(tmp_path / "c.sqlite"))
    alice, bob = owner_cache_path("alice"), owner_cache_path("bob")
    assert alice is not None and bob is not None and alice != bob
    assert alice.parent == bob.parent == tmp_path / "owners"
    monkeypatch.setenv("DISTILFORGE_RESPONSE_CACHE", "off")
    assert owner_cache_path("alice") is None


def test_the_cache_stays_within_its_bound(fake, cli, tmp_path, monkeypatch):
    from distilforge.core.response_cache import ResponseCache

    monkeypatch.setenv("DISTILFORGE_RESPONSE_CACHE_MAX_MB", "0.02")  # about 20 KB
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"Q{i}: {'long ' * 40}{i}?", "answer": f"#### {i}"}
                                                   for i in range(60)])
    fake.default = Behaviour(["Worked it out at length. " * 20 + "\nThe answer is 0."])
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url, budget__prices=PRICES))
    _run(cli, config, tmp_path / "a")
    cache = ResponseCache(Path(os.environ["DISTILFORGE_RESPONSE_CACHE"]))
    stats = cache.stats()
    cache.close()
    assert 0 < stats["entries"] < 120 and stats["bytes"] <= 0.02 * 1024 * 1024


def test_a_cached_reasoning_answer_keeps_its_trace_and_bills_no_tokens(fake, cli, tmp_path):
    fake.script = {f"Q{i}:": Behaviour([f"The answer is {2 * i}."], reasoning=[f"{i} plus {i} makes {2 * i}."],
                                       shape="reasoning_content") for i in range(1, 7)}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url, budget__prices=PRICES))
    first = _run(cli, config, tmp_path / "a")
    billed = len(fake.bills)
    second = _run(cli, config, tmp_path / "b")
    assert fake.ledger(billed) == [] and second["requests"]["cached"] == 12
    traces = lambda out: sorted((r["seed_id"], r["reasoning"]) for r in load_kept(out))  # noqa: E731
    assert traces(tmp_path / "a") == traces(tmp_path / "b") and all(t for _, t in traces(tmp_path / "b"))
    # The folder's tokens are what its teacher billed: nothing, for answers the cache gave.
    assert first["tokens"]["completion"] > 0 and first["tokens"]["reasoning"] > 0
    assert second["tokens"]["prompt"] == second["tokens"]["completion"] == second["tokens"]["reasoning"] == 0
