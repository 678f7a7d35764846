"""The service boundary, second pass (#18): what an adversarial tenant got through the first one. Every
test runs on SQLite and on the local PostgreSQL (the `service` fixture), against real workers and the
fake teacher on loopback."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import write_jsonl
from fake_openai import Behaviour
from test_service import ADMIN, AUTH, _client, _job_config, _wait, database_url, service

pytestmark = pytest.mark.service

SHARED_FIXTURES = (database_url, service)  # every test here runs on SQLite and PostgreSQL


def _loc(response) -> list[str]:
    return [d["loc"] for d in response.json()["detail"]]


def _msg(response, loc: str) -> str:
    return next(d["msg"] for d in response.json()["detail"] if d["loc"] == loc)


def _store(settings):
    from distilforge.service.db import make_engine, make_sessions
    from distilforge.service.migrate import migrate
    from distilforge.service.store import Store

    engine = make_engine(settings.database_url)
    migrate(engine)
    return Store(make_sessions(engine), settings.lease_seconds)


def _billed(fake) -> int:
    return len(fake.ledger())


# -- 1. money: a discount is a price ---------------------------------------------------------------


def test_a_batch_discount_is_the_servers_not_the_jobs(service, fake):
    from distilforge.schemas import Prices

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    fake.batch_seconds = 0.1
    service.prices = {fake.base_url: Prices(input_per_million=1000.0, output_per_million=1000.0)}
    service.limits.min_poll_seconds = 0.05
    data = _job_config(service, fake, n=4)
    data["teacher"].update(batch_api=True, batch_poll_seconds=0.05)
    with _client(service) as client:
        refused = client.post("/v1/jobs", json={**data, "budget": {"batch_discount": 1e-9}}, headers=AUTH)
        assert refused.status_code == 422 and _loc(refused) == ["budget.batch_discount"]
        assert "DISTILFORGE_BATCH_DISCOUNTS" in _msg(refused, "budget.batch_discount")
        # No server discount: the job is charged the full price (never less than the server billed).
        job = _wait(client, client.post("/v1/jobs", json=data, headers=AUTH).json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        assert job["cost_usd"] == pytest.approx(fake.billed_usd(1000.0, 1000.0, batch_multiplier=1.0), rel=1e-6)
        assert job["cost_usd"] >= fake.billed_usd(1000.0, 1000.0) > 0
        # The server's discount for this endpoint (DISTILFORGE_BATCH_DISCOUNTS): the job costs what was billed.
        service.batch_discounts = {fake.base_url: 0.5}
        before = len(fake.ledger())
        job = _wait(client, client.post("/v1/jobs", json=data, headers=AUTH).json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        assert job["cost_usd"] == pytest.approx(fake.billed_usd(1000.0, 1000.0, since=before), rel=1e-6)


def test_batch_discounts_setting_is_parsed_and_matched_like_prices(monkeypatch):
    from distilforge.schemas import TeacherConfig
    from distilforge.service.prices import batch_discount
    from distilforge.service.settings import SettingsError, parse_discounts

    table = parse_discounts("https://api.openai.com/v1=0.5,gpt-x=0.4,*=0.9")
    assert batch_discount(TeacherConfig(backend="openai", model="gpt-x"), table) == 0.5  # the endpoint wins
    assert batch_discount(TeacherConfig(backend="openai", model="m", base_url="http://h:1/v1"), table) == 0.9
    assert batch_discount(TeacherConfig(backend="openai", model="gpt-x", base_url="http://h:1/v1"), table) == 0.4
    assert batch_discount(TeacherConfig(backend="openai", model="m", base_url="http://h:1/v1"), {}) == 1.0
    for bad in ("x=0", "x=1.5", "x=half", "0.5"):
        with pytest.raises(SettingsError):
            parse_discounts(bad)


# -- 2. redirects ------------------------------------------------------------------------------------


class _Redirector:
    """An allowed endpoint that answers every request with a 307 to another host (the fake teacher)."""

    def __init__(self, target_root: str):
        class Handler(BaseHTTPRequestHandler):
            def _redirect(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(307)
                self.send_header("Location", target_root + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect

            def log_message(self, *args: typing.Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_teacher_that_redirects_is_never_followed(service, fake):
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    redirector = _Redirector(fake.base_url[: -len("/v1")])
    try:
        service.allowed_teachers = [fake.base_url, redirector.url]
        data = _job_config(service, fake, n=3)
        data["teacher"]["base_url"] = redirector.url
        with _client(service) as client:
            job = _wait(client, client.post("/v1/jobs", json=data, headers=AUTH).json()["id"],
                        {"succeeded", "failed"})
    finally:
        redirector.close()
    assert job["state"] == "failed" and "redirect" in job["error"] and "307" in job["error"]
    assert _billed(fake) == 0  # the host behind the redirect saw nothing


def test_no_client_follows_redirects_cli_and_batch_included(fake, monkeypatch):
    import asyncio

    from distilforge.schemas import TeacherConfig
    from distilforge.teachers.base import AttemptFailed
    from distilforge.teachers.openai_api import OpenAITeacher

    monkeypatch.setenv("DISTILFORGE_TEST_KEY", "sk-test-secret-123")
    redirector = _Redirector(fake.base_url[: -len("/v1")])
    config = TeacherConfig(backend="openai", model="m", base_url=redirector.url, api_key_env="DISTILFORGE_TEST_KEY")
    teacher = OpenAITeacher(config)

    async def attempt() -> AttemptFailed:
        try:
            with pytest.raises(AttemptFailed) as caught:
                await teacher.attempt([{"role": "user", "content": "1 + 2?"}])
            return caught.value
        finally:
            await teacher.aclose()

    try:
        failure = asyncio.run(attempt())
    finally:
        redirector.close()
    assert failure.kind == "redirect" and not failure.retryable and "307" in str(failure)
    assert _billed(fake) == 0
    client = OpenAITeacher(config).batch_client()
    assert client._client.follow_redirects is False  # the SDK's httpx client (files and batches)


# -- 3 and 4. model folders, symlinks and hard links -------------------------------------------------


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "weights.safetensors").write_bytes(b"inside")
    return path


def test_model_folders_are_walked_without_following_links_and_copied_at_claim(service, fake, tmp_path):
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    root = service.data_roots[0]
    outside = tmp_path / "outside-weights.safetensors"
    outside.write_bytes(b"SECRET WEIGHTS")
    linked = _model_folder(root / "linked")
    (linked / "weights.safetensors").unlink()
    (linked / "weights.safetensors").symlink_to(outside)
    hard = _model_folder(root / "hard")
    (hard / "weights.safetensors").unlink()
    os.link(outside, hard / "weights.safetensors")
    _model_folder(root / "good")
    data = _job_config(service, fake, n=2)
    with _client(service) as client:
        for folder in (linked, hard):
            r = client.post("/v1/jobs", json={**data, "train": {"student": str(folder)}}, headers=AUTH)
            assert r.status_code == 422 and _loc(r) == ["train.student"], r.text
        r = client.post("/v1/jobs", json={**data, "train": {"student": "good"}}, headers=AUTH)
        assert r.status_code == 201, r.text
        job = _wait(client, r.json()["id"], {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    copy = service.runs_dir / job["id"] / "inputs" / "model-student" / "good"
    assert (copy / "weights.safetensors").read_bytes() == b"inside"  # the run loads the copy, not the folder


def test_a_model_file_swapped_for_a_symlink_after_submission_is_refused_at_claim(service, fake, tmp_path):
    from distilforge.service.worker import Worker

    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"SECRET")
    folder = _model_folder(service.data_roots[0] / "model")
    data = _job_config(service, fake, n=2)
    with _client(service, workers=0) as client:
        r = client.post("/v1/jobs", json={**data, "train": {"student": str(folder)}}, headers=AUTH)
        assert r.status_code == 201, r.text
        (folder / "weights.safetensors").unlink()
        (folder / "weights.safetensors").symlink_to(outside)
        assert Worker(_store(service), service).run_once()
        job = client.get(f"/v1/jobs/{r.json()['id']}", headers=AUTH).json()
    assert job["state"] == "failed" and "train.student" in job["error"] and "symlink" in job["error"], job
    assert _billed(fake) == 0


def test_a_hard_link_to_a_file_outside_the_roots_is_refused(service, fake, tmp_path):
    from distilforge.service.worker import Worker

    outside = write_jsonl(tmp_path / "secret.jsonl", [{"question": "SECRET", "answer": "#### 1"}])
    root = service.data_roots[0]
    os.link(outside, root / "linked.jsonl")
    data = _job_config(service, fake, n=2)
    with _client(service, workers=0) as client:
        r = client.post("/v1/jobs", json={**data, "seeds": {**data["seeds"], "path": "linked.jsonl"}}, headers=AUTH)
        assert r.status_code == 422 and _loc(r) == ["seeds.path"] and "hard link" in _msg(r, "seeds.path")
        # Linked after the check: the worker's fstat on the opened descriptor refuses it.
        r = client.post("/v1/jobs", json=data, headers=AUTH)
        assert r.status_code == 201
        seeds = Path(data["seeds"]["path"])
        seeds.unlink()
        os.link(outside, seeds)
        assert Worker(_store(service), service).run_once()
        job = client.get(f"/v1/jobs/{r.json()['id']}", headers=AUTH).json()
    assert job["state"] == "failed" and "seeds.path" in job["error"] and "hard link" in job["error"], job
    assert _billed(fake) == 0


# -- 5. every knob has a limit --------------------------------------------------------------------


def _numeric_fields(model: type, seen: set[type] | None = None) -> typing.Iterator[tuple[str, str]]:
    from pydantic import BaseModel

    seen = seen if seen is not None else set()
    if model in seen:
        return
    seen.add(model)
    for name, info in model.model_fields.items():
        stack = [info.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _numeric_fields(kind, seen)
            elif kind in (int, float):
                yield model.__name__, name
            else:
                stack += [a for a in typing.get_args(kind) if a is not type(None)]


def test_every_numeric_field_of_a_job_has_a_server_limit_or_a_reason_not_to():
    from distilforge.schemas import JobConfig
    from distilforge.service.settings import Limits
    from distilforge.service.validate import EXTRA_LIMITS, LIMITS, UNLIMITED

    fields = set(_numeric_fields(JobConfig))
    assert ("TeacherConfig", "rpm") in fields and ("MinhashFilterSpec", "shingle") in fields
    missing = sorted(f for f in fields if f not in LIMITS and f not in UNLIMITED)
    assert not missing, f"numeric config fields with no server limit: {missing}"
    names = {f.name for f in dataclasses.fields(Limits)}
    assert set(LIMITS.values()) | set(EXTRA_LIMITS.values()) <= names


KNOBS = [  # (dotted key, value, the limit's variable): all were accepted before (201)
    ("teacher.rpm", 0.001, "DISTILFORGE_LIMITS_MIN_RPM"),
    ("teacher.tpm", 1, "DISTILFORGE_LIMITS_MIN_TPM"),
    ("teacher.retry.max_attempts", 10**6, "DISTILFORGE_LIMITS_ATTEMPTS"),
    ("teacher.retry.max_wait_s", 1e9, "DISTILFORGE_LIMITS_RETRY_SECONDS"),
    ("teacher.timeout", 1e9, "DISTILFORGE_LIMITS_REQUEST_SECONDS"),
    ("teacher.params.max_tokens", 10**7, "DISTILFORGE_LIMITS_COMPLETION_TOKENS"),
    ("teacher.params.max_completion_tokens", 10**9, "DISTILFORGE_LIMITS_COMPLETION_TOKENS"),
    ("teacher.batch_poll_seconds", 0.001, "DISTILFORGE_LIMITS_MIN_POLL_SECONDS"),
    ("train.epochs", 1e9, "DISTILFORGE_LIMITS_EPOCHS"),  # train.enabled is false: checked all the same
    ("train.max_length", 10**9, "DISTILFORGE_LIMITS_SEQUENCE_TOKENS"),
    ("train.gkd.max_new_tokens", 10**9, "DISTILFORGE_LIMITS_COMPLETION_TOKENS"),
    ("eval.max_tokens", 10**8, "DISTILFORGE_LIMITS_COMPLETION_TOKENS"),
    ("filters.0.shingle", 10**6, "DISTILFORGE_LIMITS_NGRAM"),
]


def _with(data: dict, dotted: str, value: typing.Any) -> dict:
    import copy

    data = copy.deepcopy(data)
    if dotted.startswith("filters.0."):
        data["filters"] = [{"name": "minhash", dotted.rsplit(".", 1)[1]: value}]
        return data
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return data


def test_knobs_past_a_server_limit_get_a_422_naming_the_key_and_the_limit(service, fake, monkeypatch):
    data = _job_config(service, fake)
    with _client(service, workers=0) as client:
        for dotted, value, variable in KNOBS:
            r = client.post("/v1/jobs", json=_with(data, dotted, value), headers=AUTH)
            assert r.status_code == 422 and _loc(r) == [dotted], (dotted, r.text)
            assert variable in _msg(r, dotted), (dotted, r.text)
        # Reasoning teachers fit the defaults: 32k completion tokens, a 30-minute request.
        roomy = _with(_with(data, "teacher.params.max_completion_tokens", 32_768), "teacher.timeout", 1800)
        assert client.post("/v1/jobs", json=roomy, headers=AUTH).status_code == 201
        # The server changes a limit through the environment; the job is refused, never clamped.
        from distilforge.service.settings import Limits

        monkeypatch.setenv("DISTILFORGE_LIMITS_REQUEST_SECONDS", "60")
        service.limits = Limits()
        r = client.post("/v1/jobs", json=_with(data, "teacher.timeout", 61), headers=AUTH)
        assert r.status_code == 422 and _msg(r, "teacher.timeout") == "at most 60 (DISTILFORGE_LIMITS_REQUEST_SECONDS)"


def test_a_job_past_its_wall_clock_limit_ends_failed(service, fake):
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    fake.latency = (1.0, 1.0)
    service.limits.job_seconds = 1.0
    data = _job_config(service, fake, n=40)
    data["teacher"]["max_concurrency"] = 1
    with _client(service) as client:
        job = _wait(client, client.post("/v1/jobs", json=data, headers=AUTH).json()["id"],
                    {"succeeded", "failed", "cancelled"}, timeout=30)
    assert job["state"] == "failed" and "DISTILFORGE_LIMITS_JOB_SECONDS" in job["error"], job
    assert _billed(fake) < 40


def test_claiming_is_fair_across_owners(service, fake):
    settings = dataclasses.replace(service, api_tokens=["alice:tok-alice-1", "bob:tok-bob-2"])
    alice, bob = {"Authorization": "Bearer tok-alice-1"}, {"Authorization": "Bearer tok-bob-2"}
    data = _job_config(service, fake, n=1)
    with _client(settings, workers=0) as client:
        mine = [client.post("/v1/jobs", json=data, headers=alice).json()["id"] for _ in range(3)]
        theirs = client.post("/v1/jobs", json=data, headers=bob).json()["id"]
    store = _store(settings)
    first, second = store.claim("w1"), store.claim("w2")
    assert first.id == mine[0] and second.id == theirs  # not alice's second job while bob waits


# -- 6. cancel frees the worker -----------------------------------------------------------------------


def _million_seeds(path: Path, n: int = 1_000_000, gold: bool = True) -> Path:
    line = b'{"question": "Q%d: 1 + 2?", "answer": "#### 3"}\n' if gold else b'{"question": "Q%d: 1 + 2?"}\n'
    with path.open("wb") as fh:
        for start in range(0, n, 100_000):
            fh.write(b"".join(line % i for i in range(start, min(n, start + 100_000))))
    return path


def _cancel_and_time(client, job_id: str) -> tuple[dict, float]:
    asked = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 200
    job = _wait(client, job_id, {"cancelled", "failed", "succeeded"}, timeout=300)
    print(f"cancel to {job['state']}: {time.monotonic() - asked:.2f} s")
    return job, time.monotonic() - asked


def test_a_cancelled_million_seed_job_ends_cancelled_within_seconds(service, fake):
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    fake.latency = (0.05, 0.05)
    # No gold answers: the run's own pre-check of a million rows takes seconds, not minutes.
    data = _job_config(service, fake, n=1)
    data["seeds"] = {"path": str(_million_seeds(service.data_roots[0] / "million.jsonl", gold=False)),
                     "fields": {"question": "question", "answer": None}}
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        deadline = time.monotonic() + 300
        while _billed(fake) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _billed(fake) >= 5, client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        job, took = _cancel_and_time(client, job_id)
    assert job["state"] == "cancelled", job
    assert took < 10, f"the cancelled job held its worker {took:.1f} s"  # a bound no load explains
    assert _billed(fake) < 1000


def test_a_million_seed_job_cancelled_while_its_seeds_are_checked_ends_within_seconds(service, fake, monkeypatch):
    from distilforge.pipeline import preflight

    reading = threading.Event()

    class SlowSource(preflight.SeedSource):
        """Reads a row in 0.2 ms more, as a slow disk or a busy machine would (a million rows: minutes), so the
        cancel lands inside the check of every seed however fast this machine is, not after it."""

        def read(self, *args, **kwargs):
            for seed in super().read(*args, **kwargs):
                reading.set()
                time.sleep(0.0002)
                yield seed

    monkeypatch.setattr(preflight, "SeedSource", SlowSource)
    data = _job_config(service, fake, n=1)
    data["seeds"]["path"] = str(_million_seeds(service.data_roots[0] / "million.jsonl"))
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        _wait(client, job_id, {"running"})
        assert reading.wait(60), "the seeds were never checked"
        job, took = _cancel_and_time(client, job_id)
    assert job["state"] == "cancelled", job
    assert took < 10, f"the cancelled job held its worker {took:.1f} s"
    assert _billed(fake) == 0


def test_a_claim_of_a_job_with_a_cancel_request_ends_it_at_once(service, fake):
    from distilforge.service.worker import Worker

    with _client(service, workers=0) as client:
        job_id = client.post("/v1/jobs", json=_job_config(service, fake), headers=AUTH).json()["id"]
        store = _store(service)
        assert store.claim("a-worker-that-dies").id == job_id
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 200
        time.sleep(service.lease_seconds + 0.5)  # its lease expires: the next worker claims it
        assert Worker(store, service).run_once()
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert job["state"] == "cancelled" and job["attempts"] == 2, job
    assert _billed(fake) == 0


# -- 7. submissions cost the API nothing per seed, and are rate-limited --------------------------------


def test_a_submission_reads_no_seeds(service, fake, monkeypatch):
    import distilforge.core.seeds as seeds_module

    reads = []
    real = seeds_module.iter_rows
    monkeypatch.setattr(seeds_module, "iter_rows", lambda *a, **k: reads.append(a) or real(*a, **k))
    seeds = _million_seeds(service.data_roots[0] / "million.jsonl", 200_000)
    data = _job_config(service, fake, n=1)
    data["seeds"]["path"] = str(seeds)
    with _client(service, workers=0) as client:
        assert client.post("/v1/jobs", json=data, headers=AUTH).status_code == 201
        service.limits.input_bytes = 1000  # the bounded check: one stat against the copy limit
        r = client.post("/v1/jobs", json=data, headers=AUTH)
        assert r.status_code == 422 and "DISTILFORGE_LIMITS_INPUT_BYTES" in _msg(r, "seeds.path")
    assert reads == []


def test_a_seeds_file_over_the_limit_fails_when_claimed(service, fake):
    from distilforge.service.worker import Worker

    service.limits.seeds = 5
    data = _job_config(service, fake, n=6, target_count=5)  # target_count answers to the seeds limit too
    with _client(service, workers=0) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        assert Worker(_store(service), service).run_once()
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        limited = client.post("/v1/jobs", json={**data, "seeds": {**data["seeds"], "limit": 5}}, headers=AUTH)
    assert job["state"] == "failed" and "more than 5 seeds" in job["error"] and "seeds.limit" in job["error"]
    assert limited.status_code == 201
    assert _billed(fake) == 0


def test_submissions_per_owner_are_rate_limited_and_refusals_do_not_count(service, fake):
    service.limits.submissions_per_minute = 3
    settings = dataclasses.replace(service, api_tokens=["t0ken", "bob:tok-bob-2"])
    data = _job_config(service, fake, n=1)
    with _client(settings, workers=0) as client:
        for _ in range(5):
            assert client.post("/v1/jobs", json={**data, "bogus": 1}, headers=AUTH).status_code == 422
        assert [client.post("/v1/jobs", json=data, headers=AUTH).status_code for _ in range(3)] == [201] * 3
        refused = client.post("/v1/jobs", json=data, headers=AUTH)
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "DISTILFORGE_LIMITS_SUBMISSIONS_PER_MINUTE" in refused.json()["detail"]
        bob = {"Authorization": "Bearer tok-bob-2"}
        assert client.post("/v1/jobs", json=data, headers=bob).status_code == 201  # per owner


# -- 8. schedules -----------------------------------------------------------------------------------


def test_schedules_and_queued_jobs_are_capped_per_owner_and_random_cron_is_refused(service, fake):
    service.limits.schedules = 2
    service.limits.queued_jobs = 2
    data = _job_config(service, fake, n=1)
    with _client(service, workers=0) as client:
        for cron in ("R * * * *", "0 R * * *", "r 3 * * *"):
            r = client.post("/v1/schedules", json={"cron": cron, "config": data}, headers=AUTH)
            assert r.status_code == 422 and _loc(r) == ["cron"], (cron, r.text)
        made = [client.post("/v1/schedules", json={"cron": "0 3 * MAR *", "config": data}, headers=AUTH)
                for _ in range(3)]
        assert [r.status_code for r in made] == [201, 201, 429]
        assert "DISTILFORGE_LIMITS_SCHEDULES" in made[2].json()["detail"]
        queued = [client.post("/v1/jobs", json=data, headers=AUTH) for _ in range(3)]
        assert [r.status_code for r in queued] == [201, 201, 429]
        assert "DISTILFORGE_LIMITS_QUEUED_JOBS" in queued[2].json()["detail"]


# -- 9. URLs ----------------------------------------------------------------------------------------


def test_encoded_query_fragment_and_percent_in_a_base_url_path_are_refused(service, fake):
    base = fake.base_url
    data = _job_config(service, fake, n=1)
    with _client(service, workers=0) as client:
        for path in ("/%3Fa=b", "/%23frag", "/%252e%252e/admin", "/%25"):
            r = client.post("/v1/jobs", json={**data, "teacher": {**data["teacher"], "base_url": base + path}},
                            headers=AUTH)
            assert r.status_code == 422 and _loc(r) == ["teacher.base_url"], (path, r.text)
        r = client.post("/v1/jobs", json={**data, "teacher": {**data["teacher"], "base_url": base + "/caf%C3%A9"}},
                        headers=AUTH)
        assert r.status_code == 201, r.text
    stored = _store(service).get(r.json()["id"]).config["teacher"]["base_url"]
    assert stored == base + "/caf%C3%A9"  # re-quoted: what is called decodes to what was checked


# -- 10. the access log -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_access_log_writes_uvicorns_lines_redacted(service, tmp_path):
    import httpx

    port = _free_port()
    env = {**os.environ, "DISTILFORGE_HOME": str(service.home), "DATABASE_URL": service.database_url,
           "DISTILFORGE_API_TOKENS": "t0ken,ops:tok-access-log-1", "DISTILFORGE_DATA_ROOTS": str(service.data_roots[0])}
    proc = subprocess.Popen([sys.executable, "-m", "distilforge", "serve", "--port", str(port), "--workers", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.post(f"{base}/v1/jobs", json={"bogus": 1}, headers=AUTH).status_code == 422
        assert httpx.get(f"{base}/v1/jobs?token=tok-access-log-1", headers=AUTH).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode in (0, -signal.SIGTERM), out[-3000:]  # stopped by us: a clean shutdown
    assert '"POST /v1/jobs HTTP/1.1" 422' in out, out[-3000:]
    assert '"GET /v1/jobs?token=' in out and "tok-access-log-1" not in out, out[-3000:]  # a secret in a query
    assert "Logging error" not in out and "Traceback" not in out, out[-3000:]


# -- 11. budget and metrics ---------------------------------------------------------------------------


def test_an_owner_sees_their_own_spend_and_metrics_need_a_token(service, fake):
    from distilforge.service.budgets import Ledger, month_scopes

    settings = dataclasses.replace(service, api_tokens=["t0ken", "bob:tok-bob-2"])
    with _client(settings, workers=0) as client:
        ledger = Ledger(_store(settings).sessions)
        bob_scopes = month_scopes(None, "bob")
        assert ledger.reserve(dict.fromkeys(bob_scopes, 100.0), 7.0, None)
        ledger.settle(bob_scopes, 7.0, 7.0, None)
        mine = client.get("/v1/budget", headers=AUTH).json()["scopes"]
        assert all(k.startswith("owner:default:") for k in mine) and "7.0" not in str(mine)
        theirs = client.get("/v1/budget", headers={"Authorization": "Bearer tok-bob-2"}).json()["scopes"]
        assert list(theirs) == [bob_scopes[1]] and theirs[bob_scopes[1]]["spent_usd"] == 7.0
        assert client.get("/v1/budget", headers=ADMIN).json()["scopes"][bob_scopes[0]]["spent_usd"] == 7.0
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=AUTH).status_code == 403
        assert client.get("/metrics", headers=ADMIN).status_code == 200
        settings.metrics_public = True
        assert client.get("/metrics").status_code == 200


def test_hub_calls_from_service_workers_follow_no_redirects(service):
    from huggingface_hub.utils import get_session

    from distilforge.service.worker import Worker

    Worker(_store(service), service)
    assert get_session().follow_redirects is False
