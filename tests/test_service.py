"""The service against a real worker and the fake teacher, on SQLite and on the local PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import yaml
from conftest import api_config, write_jsonl
from fake_openai import Behaviour

pytestmark = pytest.mark.service

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    import psycopg

    name = f"df_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def service(database_url, tmp_path, fake, monkeypatch):
    from distilforge.service.settings import Settings

    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("DISTILFORGE_TEST_KEY", "sk-test-secret-123")
    settings = Settings(home=tmp_path / "home", database_url=database_url, api_tokens=["t0ken"],
                        admin_tokens=["ops:4dm1n-t0ken"], data_roots=[root.resolve()], allowed_teachers=[fake.base_url],
                        teacher_key_envs=["DISTILFORGE_TEST_KEY"], lease_seconds=2.0)
    return settings


def _job_config(settings, fake, n=6, **gen):
    root = settings.data_roots[0]
    seeds = write_jsonl(root / f"seeds-{uuid.uuid4().hex[:6]}.jsonl",
                        [{"question": f"S{i}: 1 + 2?", "answer": "#### 3"} for i in range(n)])
    data = api_config(seeds, fake.base_url)
    data["generation"].update(samples_per_seed=1, **gen)
    return data


def _client(settings, workers=1):
    from fastapi.testclient import TestClient

    from distilforge.service.api import create_app

    return TestClient(create_app(settings, workers=workers, scheduler=False))


AUTH = {"Authorization": "Bearer t0ken"}
ADMIN = {"Authorization": "Bearer 4dm1n-t0ken"}  # /metrics and the global budget scope are an operator's


def _wait(client, job_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stuck in {job['state']}")


def test_submit_run_dataset_and_auth(service, fake):
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    with _client(service) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        body = yaml.safe_dump(_job_config(service, fake))
        created = client.post("/v1/jobs", content=body, headers={**AUTH, "Content-Type": "application/yaml"})
        assert created.status_code == 201, created.text
        job = _wait(client, created.json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded" and job["kept"] == 6 and job["stopped"] == "done"
        listing = client.get(f"/v1/jobs/{job['id']}/dataset", headers=AUTH).json()
        assert listing["splits"] == ["rejected", "train", "validation"]
        parquet = client.get(f"/v1/jobs/{job['id']}/dataset?split=train", headers=AUTH)
        assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
        assert client.get(f"/v1/jobs/{job['id']}/dataset?split=../../etc/passwd", headers=AUTH).status_code == 404
        assert "<!doctype html>" in client.get(f"/v1/jobs/{job['id']}/report", headers=AUTH).text
        metrics = client.get("/metrics", headers=ADMIN).text
        assert 'distilforge_jobs{state="succeeded"} 1' in metrics and "distilforge_kept_total 6" in metrics
        everything = json.dumps([client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json(),
                                 client.get("/v1/jobs", headers=AUTH).json(), client.get("/v1/budget", headers=AUTH).json()])
        assert "sk-test-secret-123" not in everything and "t0ken" not in everything


def test_untrusted_configs_get_422(service, fake, tmp_path):
    with _client(service, workers=0) as client:
        def post(data):
            return client.post("/v1/jobs", json=data, headers=AUTH)

        data = _job_config(service, fake)
        bad = json.loads(json.dumps(data))
        bad["teacher"]["params"]["temprature"] = 1
        r = post(bad)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "teacher.params.temprature"

        outside = json.loads(json.dumps(data))
        outside["seeds"]["path"] = "/etc/passwd"
        assert post(outside).json()["detail"][0]["loc"] == "seeds.path"

        escape = json.loads(json.dumps(data))
        escape["seeds"]["path"] = str(service.data_roots[0] / ".." / ".." / "x.jsonl")
        assert post(escape).status_code == 422

        link = service.data_roots[0] / "link.jsonl"
        target = tmp_path / "secret.jsonl"
        target.write_text('{"question": "q", "answer": "#### 1"}\n')
        link.symlink_to(target)
        symlinked = json.loads(json.dumps(data))
        symlinked["seeds"]["path"] = str(link)
        r = post(symlinked)
        assert r.status_code == 422 and "inside the data roots" in r.text

        teacher = json.loads(json.dumps(data))
        teacher["teacher"]["base_url"] = "http://169.254.169.254/v1"
        assert post(teacher).json()["detail"][0]["loc"] == "teacher.base_url"

        key = json.loads(json.dumps(data))
        key["teacher"]["api_key_env"] = "DATABASE_URL"
        assert post(key).json()["detail"][0]["loc"] == "teacher.api_key_env"

        template = json.loads(json.dumps(data))
        template["generation"]["template"] = "/etc/passwd"
        assert post(template).json()["detail"][0]["loc"] == "generation.template"

        judge = json.loads(json.dumps(data))
        judge["filters"] = [{"name": "judge", "teacher": {"backend": "openai", "model": "j", "base_url": "http://10.0.0.1/v1",
                                                         "api_key_env": "DISTILFORGE_TEST_KEY"}}]
        assert post(judge).json()["detail"][0]["loc"] == "filters.0.teacher.base_url"

        repo = json.loads(json.dumps(data))
        repo["output"] = {"hub_repo": "someone/else"}
        assert post(repo).json()["detail"][0]["loc"] == "output.hub_repo"
        assert client.get("/v1/jobs", headers=AUTH).json() == []  # nothing was queued


def test_cancel_takes_effect_within_seconds(service, fake):
    fake.latency = (0.2, 0.25)
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    data = _job_config(service, fake, n=40)
    data["teacher"]["max_concurrency"] = 1
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        _wait(client, job_id, {"running"})
        deadline = time.monotonic() + 60  # some answers in, by progress rather than by a sleep a loaded machine stretches
        while not (client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["progress"] or {}).get("samples_done"):
            assert time.monotonic() < deadline, "no progress reported"
            time.sleep(0.1)
        progress = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["progress"]
        assert progress["samples_total"] == 40 and 0 < progress["samples_done"] < 40
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 200
        started = time.monotonic()
        job = _wait(client, job_id, {"cancelled", "succeeded", "failed"}, timeout=30)
        # The job's own answers would take 40 x 0.2 s at one request at a time: it stopped early, not finished.
        assert job["state"] == "cancelled" and time.monotonic() - started < 20
        assert 0 < job["kept"] < 40


def test_two_workers_never_share_a_job(service, fake):
    from distilforge.service.db import make_engine, make_sessions
    from distilforge.service.migrate import migrate
    from distilforge.service.store import Store
    from distilforge.service.worker import Worker

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    engine = make_engine(service.database_url)
    migrate(engine)
    store = Store(make_sessions(engine), service.lease_seconds)
    from distilforge.schemas import JobConfig

    configs = [_job_config(service, fake, n=2) for _ in range(6)]
    for config in configs:  # the same questions in every job: each one asks the teacher (no response cache)
        config["teacher"]["cache"] = False
    jobs = [store.submit(JobConfig.model_validate(config).model_dump(mode="json"), str(service.runs_dir / f"j{i}"))
            for i, config in enumerate(configs)]
    claims: Counter[str] = Counter()
    original = store.claim

    def counting(owner):
        job = original(owner)
        if job is not None:
            claims[job.id] += 1
        return job

    store.claim = counting
    workers = [Worker(store, service, owner=f"w{i}") for i in range(2)]
    threads = [threading.Thread(target=lambda w=w: [w.run_once() for _ in range(6)]) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(claims) == {j.id for j in jobs} and set(claims.values()) == {1}
    assert all(store.get(j.id).state == "succeeded" and store.get(j.id).attempts == 1 for j in jobs)
    assert len(fake.requests) == 12


def test_killed_worker_is_requeued_and_repays_at_most_in_flight(service, fake, tmp_path):
    from distilforge.core.journal import JournalReader, journal_totals
    from distilforge.schemas import JobConfig, Prices
    from distilforge.service.budgets import Ledger
    from distilforge.service.db import make_engine, make_sessions
    from distilforge.service.migrate import migrate
    from distilforge.service.store import LeaseLost, Store
    from distilforge.service.worker import Worker

    fake.latency = (0.2, 0.25)
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    engine = make_engine(service.database_url)
    migrate(engine)
    store = Store(make_sessions(engine), service.lease_seconds)
    data = _job_config(service, fake, n=16)
    data["teacher"]["max_concurrency"] = 2
    job = store.submit(JobConfig.model_validate(data).model_dump(mode="json"), str(service.runs_dir / "killed"))
    # Priced by the server, under a monthly cap: what the dead worker held must not stay reserved.
    service.prices = {fake.base_url: Prices(input_per_million=100.0, output_per_million=100.0)}
    service.monthly_cap_usd = 1000.0
    env = {**os.environ, "DATABASE_URL": service.database_url, "DISTILFORGE_LEASE_SECONDS": "2",
           "DISTILFORGE_HOME": str(service.home), "DISTILFORGE_DATA_ROOTS": str(service.data_roots[0]),
           "DISTILFORGE_TEST_KEY": "sk-test", "DISTILFORGE_ALLOWED_TEACHERS": fake.base_url,
           "DISTILFORGE_TEACHER_KEY_ENVS": "DISTILFORGE_TEST_KEY", "DISTILFORGE_MONTHLY_CAP_USD": "1000",
           "DISTILFORGE_PRICES": f"{fake.base_url}=100/100"}
    proc = subprocess.Popen([sys.executable, "-m", "distilforge", "worker", "--poll", "0.2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(fake.requests) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the worker exited {proc.returncode} before it was killed"
    time.sleep(0.5)
    first = len(fake.requests)
    assert store.get(job.id).state == "running" and store.get(job.id).epoch == 1
    committed = JournalReader(service.runs_dir / job.id).totals().answers
    in_flight = first - committed  # sent, but no answer committed when the worker died
    held = Ledger(store.sessions).usage()
    assert all(v["reserved_usd"] > 0 for v in held.values()), held  # the dead worker's in-flight reservations

    time.sleep(2.2)  # the dead worker's lease runs out
    assert Worker(store, service, owner="rescuer").run_once()
    done = store.get(job.id)
    assert done.state == "succeeded" and done.attempts == 2 and done.summary["kept"] == 16
    asked = Counter(r["body"]["messages"][-1]["content"].split(":")[0] for r in fake.requests)
    assert sum(c - 1 for c in asked.values()) <= in_flight  # only what was in flight was paid again
    assert len(fake.requests) - first == 16 - done.summary["samples"]["from_journal"]
    with pytest.raises(LeaseLost):  # the dead worker's epoch can no longer write
        store.finish(job.id, 1, "failed", error="stale")
    # The ledger holds nothing any more: the dead epoch's reservations became spend at worst case, so the
    # month's spend covers at least everything the run's journal counts (answers, unknown outcomes, orphans).
    usage = Ledger(store.sessions).usage()
    spent, _ = journal_totals(service.runs_dir / job.id)
    assert all(v["reserved_usd"] == pytest.approx(0.0, abs=1e-9) for v in usage.values()), usage
    assert all(v["spent_usd"] >= spent - 1e-6 and v["spent_usd"] > 0 for v in usage.values()), (usage, spent)


def test_a_schedule_fires_once_per_tick_under_two_schedulers(service, fake):
    from distilforge.service.db import Job, Schedule, make_engine, make_sessions
    from distilforge.service.migrate import migrate
    from distilforge.service.scheduler import tick
    from distilforge.service.store import Store, now

    engine = make_engine(service.database_url)
    migrate(engine)
    store = Store(make_sessions(engine), service.lease_seconds)
    with _client(service, workers=0) as client:
        r = client.post("/v1/schedules", headers=AUTH, json={"cron": "*/5 * * * *", "timezone": "Europe/Paris",
                                                            "config": _job_config(service, fake)})
        assert r.status_code == 201, r.text
        schedule_id = r.json()["id"]
        assert client.post("/v1/schedules", headers=AUTH, json={"cron": "nope", "config": {}}).status_code == 422
    with store.sessions.begin() as s:
        s.get(Schedule, schedule_id).last_checked = now() - timedelta(minutes=31)  # 6 missed fire times
    barrier = threading.Barrier(2)
    results = []

    def run():
        barrier.wait()
        results.append(tick(store, service))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with store.sessions() as s:
        jobs = list(s.query(Job).filter(Job.schedule_id == schedule_id))
    assert len(jobs) == 1 and sorted(len(r) for r in results) == [0, 1]  # coalesced, and created once
    assert tick(store, service) == []  # nothing new is due
    with _client(service, workers=0) as client:
        assert [x["id"] for x in client.get("/v1/schedules", headers=AUTH).json()] == [schedule_id]
        assert client.delete(f"/v1/schedules/{schedule_id}", headers=AUTH).status_code == 204
        assert client.get("/v1/schedules", headers=AUTH).json() == []
        assert client.get(f"/v1/jobs/{jobs[0].id}", headers=AUTH).json()["schedule_id"] is None


def test_a_budget_shared_by_concurrent_jobs_is_never_passed(service, fake):
    from distilforge.schemas import Prices

    fake.default = Behaviour([" ".join(["word"] * 300) + "\nThe answer is 3."])
    service.monthly_cap_usd = 3.0
    data = _job_config(service, fake, n=20)
    data["teacher"]["params"]["max_tokens"] = 200
    service.prices = {fake.base_url: Prices(input_per_million=1000.0, output_per_million=1000.0)}
    with _client(service, workers=2) as client:
        ids = [client.post("/v1/jobs", json=data, headers=AUTH).json()["id"] for _ in range(2)]
        jobs = [_wait(client, i, {"succeeded", "stopped_budget", "failed"}) for i in ids]
        budget = client.get("/v1/budget", headers=ADMIN).json()
    assert all(j["state"] == "stopped_budget" for j in jobs)
    scope = next(v for k, v in budget["scopes"].items() if k.startswith("global:"))
    assert scope["spent_usd"] <= 3.0 and scope["reserved_usd"] == pytest.approx(0.0, abs=1e-9)
    assert sum(j["cost_usd"] for j in jobs) == pytest.approx(scope["spent_usd"])


def test_a_job_with_training_trains_and_evaluates(service, fake, tiny_model):
    import shutil

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    student = service.data_roots[0] / "student-model"
    shutil.copytree(tiny_model, student)
    data = _job_config(service, fake, n=4)
    eval_file = write_jsonl(service.data_roots[0] / "eval.jsonl", [{"question": "What is 2 + 2?", "answer": "#### 4"}])
    data["train"] = {"enabled": True, "student": str(student), "max_steps": 1, "batch_size": 2, "max_length": 96,
                     "lora": {"r": 2, "alpha": 4}}
    data["eval"] = {"files": [{"path": str(eval_file)}], "max_tokens": 4}
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        job = _wait(client, job_id, {"succeeded", "failed"}, timeout=120)
        assert job["state"] == "succeeded", job["error"]
    from distilforge.service.db import make_engine, make_sessions
    from distilforge.service.store import Store

    summary = Store(make_sessions(make_engine(service.database_url))).get(job_id).summary
    assert summary["train"]["steps"] == 1 and summary["eval"]["after"]["n"] == 1
