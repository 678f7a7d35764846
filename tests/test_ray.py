"""The same job local and on Ray (a local Ray on this machine's CPUs): same results, shards per rank."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import datasets
import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

pytestmark = pytest.mark.ray

PRICES = {"input_per_million": 1000.0, "output_per_million": 1000.0}


FAKES = Path(__file__).parent / "fakes"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import os

    import ray

    # Ray's workers inherit this environment when the cluster starts: the key, and a fake vLLM engine
    # (tests/fakes/vllm) that the GPU test's ranks import; two GPUs are declared for placement only.
    saved = {k: os.environ.get(k) for k in ("DISTILFORGE_TEST_KEY", "PYTHONPATH", "FAKE_VLLM_LOG")}
    log = tmp_path_factory.mktemp("vllm-log")
    os.environ.update(DISTILFORGE_TEST_KEY="sk-test-secret-123", FAKE_VLLM_LOG=str(log),
                      PYTHONPATH=os.pathsep.join(filter(None, [str(FAKES), saved["PYTHONPATH"]])))
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    for key, value in saved.items():  # this process keeps its own environment
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    ray.fake_vllm_log = log
    yield ray
    ray.shutdown()


def _job(tmp_path, fake, n=24, **executor):
    rows = [{"id": f"R{i:03d}", "question": f"R{i:03d}: what is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(n)]
    for i in range(n):  # a mix: right, wrong, unparseable, so kept and rejected sets are both non-trivial
        text = [f"{i} plus one is {i + 1}.\nThe answer is {i + 1}.", f"Guess.\nThe answer is {i + 7}.", "No idea."][i % 3]
        fake.script[f"R{i:03d}:"] = Behaviour([text, f"Counting on: {i + 1}.\nThe answer is {i + 1}."])
    data = api_config(write_jsonl(tmp_path / "seeds.jsonl", rows), fake.base_url)
    data["seeds"]["fields"]["id"] = "id"
    data["filters"] = [{"name": "minhash", "threshold": 0.9}]
    if executor:
        data["executor"] = executor
    return data


def _outputs(out):
    kept = sorted(zip(*(load_kept(out)[c] for c in ("seed_id", "sample_index", "text")), strict=True))
    rejected = datasets.load_from_disk(str(out / "rejected"))
    return kept, sorted(zip(rejected["seed_id"], rejected["sample_index"], rejected["reject_reason"], strict=True))


def test_local_and_ray_give_the_same_dataset(ray_cluster, fake, cli, tmp_path):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    data = _job(tmp_path, fake)
    assert cli("run", write_config(tmp_path / "a.yaml", data), "--output", local).exit_code == 0
    data = _job(tmp_path, fake, kind="ray", workers=2)
    data["teacher"]["cache"] = False  # both runs ask the teacher: their requests are compared
    result = cli("run", write_config(tmp_path / "b.yaml", data), "--output", ray_out)
    assert result.exit_code == 0, result.output
    assert _outputs(local) == _outputs(ray_out)
    a, b = (json.loads((d / "run.json").read_text()) for d in (local, ray_out))
    assert a["kept"] == b["kept"] and a["rejected"] == b["rejected"] and b["executor"]["workers"] == 2
    assert sorted(p.name for p in (ray_out / "journal").iterdir() if p.suffix == ".sqlite") == [
        "rank-00000.sqlite", "rank-00001.sqlite"]
    assert b["stages"]["generate"]["requests"]["sent"] == a["stages"]["generate"]["requests"]["sent"] == 24


def test_the_cap_holds_across_ranks(ray_cluster, fake, cli, tmp_path):
    data = _job(tmp_path, fake, n=30, kind="ray", workers=2)
    data["budget"] = {"prices": PRICES, "max_usd": 1.2}
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    billed = fake.billed_usd(PRICES["input_per_million"], PRICES["output_per_million"])
    assert run["stopped"] == "budget" and billed <= 1.2
    assert run["budget"]["spent_usd_total"] >= billed - 1e-9


def test_a_killed_rank_is_resumed_from_its_journal(ray_cluster, fake, cli, tmp_path):
    fake.latency = (0.15, 0.2)
    data = _job(tmp_path, fake, n=24, kind="ray", workers=2)
    data["teacher"]["max_concurrency"] = 2
    data["budget"] = {"prices": PRICES, "max_usd": 100.0}
    config = write_config(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    at_kill: dict = {}

    def kill_rank_1():
        while fake.chat_requests < 6:
            time.sleep(0.01)
        name = next(a["name"] for a in ray_cluster.util.list_named_actors(all_namespaces=True)
                    if a["name"].endswith("-rank-1"))
        at_kill.update(fake.snapshot(lambda: ray_cluster.kill(ray_cluster.get_actor(name))))

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    first = cli("run", config, "--output", out, expect=1)
    killer.join()
    assert first.exit_code == 1 and "rank 1" in first.output, first.output
    billed_first = fake.billed_keys()
    second = cli("run", config, "--output", out)
    assert second.exit_code == 0, second.output
    run = json.loads((out / "run.json").read_text())
    assert run["executor"]["reused_ranks"] == [0]  # the rank that completed is not run again
    pairs = [(r["seed_id"], r["sample_index"]) for r in load_kept(out)]
    rejected = datasets.load_from_disk(str(out / "rejected"))
    pairs += list(zip(rejected["seed_id"], rejected["sample_index"], strict=True))
    assert sorted(pairs) == sorted((f"R{i:03d}", s) for i in range(24) for s in range(2))  # each exactly once
    again = fake.billed_keys(since=sum(billed_first.values()))
    repaid = [k for k in again if k in billed_first]
    assert len(repaid) <= 2  # at most what rank 1 had in flight (its concurrency)


def test_vllm_offline_places_one_engine_per_gpu_and_feeds_it_large_batches(ray_cluster, cli, tmp_path, tiny_model):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"V{i}: what is 0 + 1?", "answer": "#### 1"}
                                                   for i in range(96)])
    data = {"seeds": {"path": str(seeds)},
            "teacher": {"backend": "vllm-offline", "model": str(tiny_model), "batch_size": 64,
                        "engine_args": {"tensor_parallel_size": 1}, "params": {"max_tokens": 8}},
            "executor": {"kind": "ray", "workers": 2}}
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    engines = [json.loads(p.read_text()) for p in ray_cluster.fake_vllm_log.glob("engine-*.json")]
    assert len(engines) == 2 and len({e["pid"] for e in engines}) == 2  # one engine per rank
    assert sorted(e["gpus"] for e in engines) == ["0", "1"]  # each on its own GPU
    assert sum(sum(e["batches"]) for e in engines) == 96
    # Fed in batches, not one by one. How large depends on how fast the ranks queue requests, which load
    # changes (a quiet machine gives batches of 48; a loaded one 15), so the bound is one that one-by-one
    # feeding fails under any load.
    calls = [b for e in engines for b in e["batches"]]
    assert max(calls) >= 4 and len(calls) <= 48, calls
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["kept"] == 96


def test_the_service_hands_a_job_to_the_cluster_and_keeps_its_cancel(ray_cluster, fake, tmp_path, monkeypatch):
    """DISTILFORGE_RAY_ADDRESS: the worker keeps the lease, the fence and cancel; the ranks run on Ray."""
    from fastapi.testclient import TestClient

    from distilforge.service.api import create_app
    from distilforge.service.settings import Settings

    root = (tmp_path / "data").resolve()
    root.mkdir()
    monkeypatch.setenv("DISTILFORGE_TEST_KEY", "sk-test-secret-123")
    home = tmp_path / "home"
    monkeypatch.setenv("DISTILFORGE_HOME", str(home))  # the budget actor reconnects to this store
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'distilforge.db'}", api_tokens=["t0ken"],
                        data_roots=[root], allowed_teachers=[fake.base_url], teacher_key_envs=["DISTILFORGE_TEST_KEY"],
                        lease_seconds=2.0, ray_address="auto")
    auth = {"Authorization": "Bearer t0ken"}

    def job(n, latency=False):
        seeds = write_jsonl(root / f"seeds-{n}.jsonl", [{"question": f"K{i}: 1 + 2?", "answer": "#### 3"}
                                                        for i in range(n)])
        data = api_config(seeds, fake.base_url)
        data["generation"]["samples_per_seed"] = 1
        data["teacher"]["max_concurrency"] = 2
        data["executor"] = {"workers": 2}
        return data

    def wait(client, job_id, states, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            if state["state"] in states:
                return state
            time.sleep(0.1)
        raise AssertionError(f"{job_id} stuck in {state['state']}")

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    with TestClient(create_app(settings, workers=1, scheduler=False)) as client:
        done = wait(client, client.post("/v1/jobs", json=job(8), headers=auth).json()["id"], {"succeeded", "failed"})
        assert done["state"] == "succeeded" and done["kept"] == 8, done
        run_dir = home / "runs" / done["id"]
        assert sorted(p.name for p in (run_dir / "journal").glob("rank-*.sqlite")) == [
            "rank-00000.sqlite", "rank-00001.sqlite"]
        assert json.loads((run_dir / "run.json").read_text())["executor"]["kind"] == "ray"

        fake.latency = (0.3, 0.35)
        slow = client.post("/v1/jobs", json=job(60), headers=auth).json()["id"]
        wait(client, slow, {"running"})
        deadline = time.monotonic() + 60  # cancelled mid-run: once its ranks have answered something
        while (client.get(f"/v1/jobs/{slow}", headers=auth).json()["progress"] or {}).get("samples_done", 0) < 4:
            assert time.monotonic() < deadline, "the job never started answering"
            time.sleep(0.1)
        assert client.post(f"/v1/jobs/{slow}/cancel", headers=auth).status_code == 200
        started = time.monotonic()
        cancelled = wait(client, slow, {"cancelled", "succeeded", "failed"}, timeout=30)
        assert cancelled["state"] == "cancelled" and time.monotonic() - started < 8
        assert 0 < cancelled["kept"] < 60


def test_a_stop_sent_before_the_ranks_open_reaches_every_rank(ray_cluster, fake, tmp_path):
    """A cancel that arrives while the ranks' workers are still starting (a loaded machine) stops them all."""
    import asyncio

    from distilforge.pipeline.build import build_pipeline
    from distilforge.pipeline.ray import RayExecutor
    from distilforge.pipeline.steps import Progress, RunControl
    from distilforge.schemas import load_config

    data = _job(tmp_path, fake, kind="ray", workers=2)
    data["teacher"]["cache"] = False
    config = load_config(write_config(tmp_path / "job.yaml", data))
    control = RunControl()
    executor = RayExecutor(config.executor)
    executor.stop("cancelled")  # and the driver repeats it, as it does a few times a second
    executor.stop("cancelled")
    results = asyncio.run(asyncio.wait_for(executor.run(build_pipeline(config), tmp_path / "run",
                                                        control.budget(config, 0.0), control, Progress()), 60))
    assert [(r.rank, r.error, r.stop_reasons) for r in results] == [(0, None, ["cancelled"]), (1, None, ["cancelled"])]
    assert fake.chat_requests == 0  # nothing was sent after the cancel
