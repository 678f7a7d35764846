"""The service for a person with a browser: run.json, eval results, logs, the OpenAI export, a signed report
link, a job's stage, schedules' next fire and last job, bodies without a Content-Type, per-owner caches."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml
from conftest import api_config, write_jsonl
from fake_openai import Behaviour

pytestmark = pytest.mark.service

AUTH = {"Authorization": "Bearer tok-a"}
BOB = {"Authorization": "Bearer tok-b"}


@pytest.fixture
def settings(tmp_path, fake, monkeypatch):
    from distilforge.service.settings import Settings

    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("DISTILFORGE_TEST_KEY", "sk-test-secret-123")
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'store.db'}",
                    api_tokens=["alice:tok-a", "bob:tok-b"], data_roots=[root.resolve()],
                    allowed_teachers=[fake.base_url], teacher_key_envs=["DISTILFORGE_TEST_KEY"], lease_seconds=2.0)


def _config(settings, fake, n=12):
    seeds = write_jsonl(settings.data_roots[0] / f"seeds-{uuid.uuid4().hex[:6]}.jsonl",
                        [{"question": f"S{i}: {i} + 2?", "answer": f"#### {i + 2}"} for i in range(n)])
    fake.script = {f"S{i}:": Behaviour([f"{i} + 2 = {i + 2}.\nThe answer is {i + 2}."]) for i in range(n)}
    data = api_config(seeds, fake.base_url)
    data["generation"].update(samples_per_seed=1)
    return data


def _client(settings):
    from fastapi.testclient import TestClient

    from distilforge.service.api import create_app

    return TestClient(create_app(settings, workers=1, scheduler=False))


def _wait(client, job_id, headers=AUTH, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stuck")


def test_a_finished_job_can_be_read_in_a_browser(settings, fake):
    with _client(settings) as client:
        # curl --data-binary @job.yaml without -H: no JSON content type, read as YAML
        created = client.post("/v1/jobs", content=yaml.safe_dump(_config(settings, fake)),
                              headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
        assert created.status_code == 201, created.text
        job = _wait(client, created.json()["id"])
        assert job["state"] == "succeeded" and job["stage"] is None and "stage" in job
        job_id = job["id"]

        run = client.get(f"/v1/jobs/{job_id}/run", headers=AUTH)
        assert run.status_code == 200 and run.json()["kept"] == 12
        assert str(settings.home) not in run.text and "sk-test-secret-123" not in run.text
        assert client.get(f"/v1/jobs/{job_id}/run", headers=BOB).status_code == 404  # another owner's job

        logs = client.get(f"/v1/jobs/{job_id}/logs", headers=AUTH)
        assert logs.status_code == 200 and "12 seeds x 1 samples" in logs.text and "\r" not in logs.text
        assert str(settings.home) not in logs.text

        export = client.get(f"/v1/jobs/{job_id}/export?split=train", headers=AUTH)
        assert export.status_code == 200
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert lines and all(line["metadata"]["id"] and line["messages"][-1]["role"] == "assistant" for line in lines)
        assert len(lines) == 12 and "X-Distilforge-Warning" not in export.headers  # 12 >= OpenAI's 10
        assert client.get(f"/v1/jobs/{job_id}/export?split=../x", headers=AUTH).status_code == 404

        evals = client.get(f"/v1/jobs/{job_id}/eval", headers=AUTH)
        assert evals.status_code == 200 and evals.json()["questions"] == []
        assert client.get(f"/v1/jobs/{job_id}/eval?which=after", headers=AUTH).status_code == 404

        link = client.get(f"/v1/jobs/{job_id}/report-link", headers=AUTH)
        assert link.status_code == 200 and 0 < link.json()["seconds"] <= 3600
        page = client.get(link.json()["url"])  # no token: the signature is the permission
        assert page.status_code == 200 and "<!doctype html>" in page.text.lower()
        forged = link.json()["url"].replace("sig=", "sig=0")
        assert client.get(forged).status_code == 403
        other = link.json()["url"].replace(f"/reports/{job_id}", f"/reports/{uuid.uuid4().hex}")
        assert client.get(other).status_code == 403  # the signature covers the job
        assert client.get(f"/v1/jobs/{job_id}/report-link", headers=BOB).status_code == 404


def test_an_expired_report_link_is_refused(settings, fake, monkeypatch):
    from distilforge.service.routes import browse

    with _client(settings) as client:
        created = client.post("/v1/jobs", content=json.dumps(_config(settings, fake, n=2)),
                              headers={**AUTH, "Content-Type": "application/json"})
        job = _wait(client, created.json()["id"])
        expires = int(time.time()) - 1
        url = f"/v1/reports/{job['id']}?expires={expires}&sig={browse.sign(job['id'], expires)}"
        assert client.get(url).status_code == 410


def test_bodies_without_a_usable_content_type(settings, fake):
    with _client(settings) as client:
        body = yaml.safe_dump(_config(settings, fake, n=2))
        no_type = client.post("/v1/jobs", content=body.encode(), headers={**AUTH, "Content-Type": ""})
        assert no_type.status_code == 201, no_type.text
        refused = client.post("/v1/jobs", content=body, headers={**AUTH, "Content-Type": "text/html"})
        assert refused.status_code == 415 and "application/yaml" in refused.json()["detail"]
        _wait(client, no_type.json()["id"])


def test_schedules_show_their_next_fire_and_last_job(settings, fake):
    with _client(settings) as client:
        made = client.post("/v1/schedules", headers=AUTH,
                           json={"cron": "0 3 * * *", "timezone": "Europe/Paris", "config": _config(settings, fake, 2)})
        assert made.status_code == 201, made.text
        listed = client.get("/v1/schedules", headers=AUTH).json()
        assert listed[0]["next_fire"].endswith("+01:00") or listed[0]["next_fire"].endswith("+02:00")
        assert "T03:00:00" in listed[0]["next_fire"] and listed[0]["last_job"] is None
        from distilforge.service.scheduler import tick
        from distilforge.service.store import Store  # noqa: F401 (the app's store fires it)

        store = client.app.state.store
        with store.sessions.begin() as s:
            from distilforge.service.db import Schedule

            schedule = s.get(Schedule, made.json()["id"])
            schedule.last_checked = schedule.last_checked.replace(year=schedule.last_checked.year - 1)
        tick(store, settings)
        listed = client.get("/v1/schedules", headers=AUTH).json()
        assert listed[0]["last_job"] is not None and listed[0]["last_job"]["id"]
        _wait(client, listed[0]["last_job"]["id"])


def test_job_stage_follows_the_run(settings):
    from types import SimpleNamespace

    from distilforge.service.routes.jobs import job_stage

    assert job_stage(SimpleNamespace(state="running", progress={"stage": "train"})) == "train"
    assert job_stage(SimpleNamespace(state="running", progress=None)) == "generate"
    assert job_stage(SimpleNamespace(state="succeeded", progress={"stage": "eval"})) is None


def test_owners_never_share_a_response_cache(settings, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILFORGE_RESPONSE_CACHE", str(tmp_path / "cache" / "responses.sqlite"))
    with _client(settings) as client:
        config = _config(settings, fake, n=3)
        first = client.post("/v1/jobs", json=config, headers=AUTH)
        _wait(client, first.json()["id"])
        billed = len(fake.bills)
        again = client.post("/v1/jobs", json=config, headers=AUTH)  # the same owner: answered from the cache
        assert _wait(client, again.json()["id"])["state"] == "succeeded"
        assert fake.ledger(billed) == []
        bobs = client.post("/v1/jobs", json=config, headers=BOB)  # another owner pays for their own
        assert _wait(client, bobs.json()["id"], headers=BOB)["state"] == "succeeded"
        assert sum(b.n for b in fake.ledger(billed)) == 3
    assert len(list((tmp_path / "cache" / "owners").glob("*.sqlite"))) == 2
