"""The service as a boundary (#11): an untrusted job cannot reach a host, a file, a model, a budget or
another owner's job it was not given. On SQLite and on the local PostgreSQL, against real workers
and the fake teacher on loopback."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl
from fake_openai import Behaviour
from test_service import ADMIN, AUTH, _client, _job_config, _wait, database_url, service

pytestmark = pytest.mark.service

SHARED_FIXTURES = (database_url, service)  # from test_service: every test here runs on SQLite and PostgreSQL

SECRET_KEY = "sk-test-secret-123"  # the value of DISTILFORGE_TEST_KEY in the `service` fixture


def _store(settings):
    from distilforge.service.db import make_engine, make_sessions
    from distilforge.service.migrate import migrate
    from distilforge.service.store import Store

    engine = make_engine(settings.database_url)
    migrate(engine)
    return Store(make_sessions(engine), settings.lease_seconds)


def _set(data, dotted, value):
    data = copy.deepcopy(data)
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]"""


def _bomb_body(data) -> bytes:
    """The job as YAML with the 9^9 alias bomb under teacher.params.extra_body."""
    clean = copy.deepcopy(data)
    clean["teacher"]["params"].pop("extra_body", None)
    text = yaml.safe_dump(clean, sort_keys=False)
    assert "\n  params:\n" in text
    bomb = "".join(f"      {line}\n" for line in BOMB.splitlines())
    return text.replace("\n  params:\n", "\n  params:\n    extra_body:\n" + bomb, 1).encode()


def _hostile_cases(settings, fake, tmp_path):
    """(name, body: dict | (bytes, content type), expected status, expected loc)."""
    root = settings.data_roots[0]
    base = fake.base_url
    port = int(base.split(":")[2].split("/")[0])
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    secret_rows = write_jsonl(outside / "secret.jsonl", [{"question": "SECRET", "answer": "#### 1"}])
    (outside / "model").mkdir(exist_ok=True)
    (outside / "model" / "config.json").write_text("{}")
    link = root / "link.jsonl"
    if not link.exists():
        link.symlink_to(secret_rows)
    other_run = settings.runs_dir / "0123456789abcdef0123456789abcdef"
    (other_run / "parquet").mkdir(parents=True, exist_ok=True)
    data = _job_config(settings, fake)
    judge = {"name": "judge", "teacher": {"backend": "openai", "model": "j", "base_url": base,
                                          "api_key_env": "DISTILFORGE_TEST_KEY"}}
    offline = {"backend": "vllm-offline", "model": "smollm2-135m-instruct", "api_key_env": None}
    local = {"backend": "local", "model": "smollm2-135m-instruct", "api_key_env": None}
    yaml_job = yaml.safe_dump(data).encode()
    cases = [
        ("unknown key (typo)", _set(data, "teacher.params.temprature", 1), 422, "teacher.params.temprature"),
        ("seeds: /etc/passwd", _set(data, "seeds.path", "/etc/passwd"), 422, "seeds.path"),
        ("seeds: ../.. out of the root", _set(data, "seeds.path", str(root / ".." / ".." / "x.jsonl")), 422, "seeds.path"),
        ("seeds: relative ../ escape", _set(data, "seeds.path", "../outside/secret.jsonl"), 422, "seeds.path"),
        ("seeds: symlink out of the roots", _set(data, "seeds.path", str(link)), 422, "seeds.path"),
        ("seeds: Hub dataset id", _set(data, "seeds.path", "openai/gsm8k"), 422, "seeds.path"),
        ("seeds: NUL in the path", _set(data, "seeds.path", str(root / "a\x00b.jsonl")), 422, "seeds.path"),
        ("seeds: ~ (server home)", _set(data, "seeds.path", "~/.ssh/id_rsa"), 422, "seeds.path"),
        ("seeds: another job's run folder", _set(data, "seeds.path", str(other_run / "parquet")), 422, "seeds.path"),
        ("seeds.limit over the server maximum", _set(data, "seeds.limit", 2_000_000), 422, "seeds.limit"),
        ("icl pool: /etc/hosts", _set(data, "generation.icl.pool", "/etc/hosts"), 422, "generation.icl.pool"),
        ("eval file outside", _set(data, "eval.files", [{"path": str(secret_rows)}]), 422, "eval.files.0.path"),
        ("decontamination set outside", _set(data, "filters", [{"name": "decontaminate", "eval_sets": ["/etc/passwd"]}]),
         422, "filters.0.eval_sets.0"),
        ("template: /etc/passwd", _set(data, "generation.template", "/etc/passwd"), 422, "generation.template"),
        ("template: __init__.py (Python source)", _set(data, "generation.template", "__init__.py"), 422, "generation.template"),
        ("template: ../prompts/cot.jinja", _set(data, "generation.template", "../prompts/cot.jinja"), 422, "generation.template"),
        ("output.dir set", _set(data, "output.dir", str(tmp_path / "anywhere")), 422, "output.dir"),
        ("output.dir = another job's run folder", _set(data, "output.dir", str(other_run)), 422, "output.dir"),
        ("hub repo not allowed", _set(data, "output.hub_repo", "someone/else"), 422, "output.hub_repo"),
        ("teacher: cloud metadata address", _set(data, "teacher.base_url", "http://169.254.169.254/v1"), 422, "teacher.base_url"),
        ("teacher: /v1/../admin", _set(data, "teacher.base_url", base + "/../admin"), 422, "teacher.base_url"),
        ("teacher: port prefix (entry :1801, job :18011)", _set(data, "teacher.base_url", "http://127.0.0.1:18011/v1"),
         422, "teacher.base_url"),
        ("teacher: credentials in the URL", _set(data, "teacher.base_url", base.replace("//", "//user:hunter2-planted@")),
         422, "teacher.base_url"),
        ("teacher: userinfo host trick", _set(data, "teacher.base_url", f"http://127.0.0.1:{port}@evil.example/v1"),
         422, "teacher.base_url"),
        ("teacher: fragment", _set(data, "teacher.base_url", base + "#frag"), 422, "teacher.base_url"),
        ("teacher: control character", _set(data, "teacher.base_url", base + "\t"), 422, "teacher.base_url"),
        ("teacher: encoded slash", _set(data, "teacher.base_url", base + "/..%2fadmin"), 422, "teacher.base_url"),
        ("teacher: encoded dot segments", _set(data, "teacher.base_url", base + "/%2e%2e/%2e%2e/admin"), 422, "teacher.base_url"),
        ("teacher: file:// scheme", _set(data, "teacher.base_url", "file:///etc/passwd"), 422, "teacher.base_url"),
        ("teacher: query string", _set(data, "teacher.base_url", base + "?x=1"), 422, "teacher.base_url"),
        ("teacher: one bad replica", _set(data, "teacher.base_url", [base, "http://10.0.0.1/v1"]), 422, "teacher.base_url.1"),
        ("key variable not allowed", _set(data, "teacher.api_key_env", "DATABASE_URL"), 422, "teacher.api_key_env"),
        ("a pasted key instead of a variable", _set(data, "teacher.api_key_env", "sk-abcdef123456"), 422, "teacher.api_key_env"),
        ("vllm-offline trust_remote_code", _set(data, "teacher", {**offline, "engine_args": {"trust_remote_code": True}}),
         422, "teacher.engine_args.trust_remote_code"),
        ("vllm-offline download_dir (a path)", _set(data, "teacher", {**offline, "engine_args": {"download_dir": "/tmp"}}),
         422, "teacher.engine_args.download_dir"),
        ("vllm-offline any Hub id", _set(data, "teacher", {**offline, "model": "evil/remote-code-model"}), 422, "teacher.model"),
        ("local backend any Hub id", _set(data, "teacher", {**local, "model": "evil/model"}), 422, "teacher.model"),
        ("local backend folder outside", _set(data, "teacher", {**local, "model": str(outside / "model")}), 422, "teacher.model"),
        ("judge: vllm-offline trust_remote_code",
         _set(data, "filters", [{"name": "judge", "teacher": {**offline, "engine_args": {"trust_remote_code": True}}}]),
         422, "filters.0.teacher.engine_args.trust_remote_code"),
        ("judge: internal endpoint", _set(data, "filters", [_set(judge, "teacher.base_url", "http://10.0.0.1/v1")]),
         422, "filters.0.teacher.base_url"),
        ("train.student any Hub id", _set(data, "train.student", "evil/student"), 422, "train.student"),
        ("train.student folder outside", _set(data, "train.student", str(outside / "model")), 422, "train.student"),
        ("GKD teacher: any Hub id", _set(data, "train.gkd.teacher", "evil/teacher"), 422, "train.gkd.teacher"),
        ("GKD teacher: folder outside", _set(data, "train.gkd.teacher", str(outside / "model")), 422, "train.gkd.teacher"),
        ("targeted rounds: 1000", _set(_set(data, "train.enabled", True), "loop.rounds", 1000), 422, "loop.rounds"),
        ("extra_body overrides model", _set(data, "teacher.params.extra_body", {"model": "gpt-4o"}), 422,
         "teacher.params.extra_body.model"),
        ("extra_body overrides n", _set(data, "teacher.params.extra_body", {"n": 128}), 422, "teacher.params.extra_body.n"),
        ("extra_body overrides messages", _set(data, "teacher.params.extra_body", {"messages": []}), 422,
         "teacher.params.extra_body.messages"),
        ("extra_body overrides max_tokens", _set(data, "teacher.params.extra_body", {"max_tokens": 10**6}), 422,
         "teacher.params.extra_body.max_tokens"),
        ("extra_body replaces the chat template",
         _set(data, "teacher.params.extra_body", {"chat_template_kwargs": {"chat_template": "{{ x }}"}}), 422,
         "teacher.params.extra_body.chat_template_kwargs.chat_template"),
        ("budget.prices set by the job", _set(data, "budget.prices", {"input_per_million": 0, "output_per_million": 0}),
         422, "budget.prices"),
        ("a judge's prices set by the job", _set(data, "filters", [{**judge, "prices": {"input_per_million": 0,
                                                                                   "output_per_million": 0}}]),
         422, "filters.0.prices"),
        ("samples_per_seed 1e9 (JSON)", _set(data, "generation.samples_per_seed", 1e9), 422, "generation.samples_per_seed"),
        ("samples_per_seed 65", _set(data, "generation.samples_per_seed", 65), 422, "generation.samples_per_seed"),
        ("samples_per_seed 1e9 (YAML)", (yaml_job.replace(b"samples_per_seed: 1", b"samples_per_seed: 1e9"),
                                         "application/yaml"), 422, "generation.samples_per_seed"),
        ("max_concurrency 100000", _set(data, "teacher.max_concurrency", 100_000), 422, "teacher.max_concurrency"),
        ("executor.address (a foreign Ray cluster)", _set(data, "executor.address", "ray://10.0.0.1:10001"), 422,
         "executor.address"),
        ("executor.workers 1000", _set(data, "executor", {"kind": "ray", "workers": 1000}), 422, "executor.workers"),
        ("self-instruct target_count 1e9", _set(_set(data, "generation.mode", "self-instruct"), "generation.target_count",
                                                10**9), 422, "generation.target_count"),
        ("minhash num_perm 1e9", _set(data, "filters", [{"name": "minhash", "num_perm": 10**9}]), 422, "filters.0.num_perm"),
        ("NUL in the system prompt", _set(data, "generation.system_prompt", "a\x00b"), 422, "generation.system_prompt"),
        ("YAML alias bomb", (_bomb_body(data), "application/yaml"), 422, "(body)"),
        ("YAML recursive alias", (b"seeds: &s {path: *s}\n", "application/yaml"), 422, "(body)"),
        ("JSON nested 100,000 deep", (b"[" * 100_000 + b"]" * 100_000, "application/json"), 422, "(body)"),
        ("YAML nested 100,000 deep", (b"a: " + b"[" * 100_000 + b"]" * 100_000, "application/yaml"), 422, "(body)"),
        ("JSON nested 40 deep", (b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}", "application/json"), 422, "(body)"),
        ("2 MiB body", (b'{"name": "' + b"x" * (2 << 20) + b'"}', "application/json"), 413, "-"),
        ("2 MiB body, chunked (no Content-Length)", (b'{"name": "' + b"x" * (2 << 20) + b'"}', "chunked"), 413, "-"),
        ("not a mapping", ([1, 2, 3], None), 422, "(body)"),
        ("not YAML", (b"seeds: [unclosed", "application/yaml"), 422, "(body)"),
        ("not UTF-8", (b'{"name": "\xff\xfe"}', "application/json"), 422, "(body)"),
        ("a Python object tag", (b"seeds: !!python/object/apply:os.system ['id']\n", "application/yaml"), 422, "(body)"),
    ]
    return cases


def _post(client, body, headers=AUTH, url="/v1/jobs"):
    if isinstance(body, dict):
        return client.post(url, json=body, headers=headers)
    payload, kind = body
    if kind is None:
        return client.post(url, json=payload, headers=headers)
    if kind == "chunked":
        chunks = (payload[i:i + 65536] for i in range(0, len(payload), 65536))
        return client.post(url, content=chunks, headers={**headers, "Content-Type": "application/json"})
    return client.post(url, content=payload, headers={**headers, "Content-Type": kind})


def _loc(response):
    if response.status_code in (401, 404, 413):
        return "-"
    return response.json()["detail"][0]["loc"]


def test_hostile_bodies_get_422_naming_the_field(service, fake, tmp_path):
    service.allowed_teachers.append("http://127.0.0.1:1801")  # an entry without a path
    service.hub_repos.append("team/allowed")
    service.allowed_models.append("team/allowed-model")
    results = []
    with _client(service, workers=0) as client:
        answers = []
        for name, body, status, loc in _hostile_cases(service, fake, tmp_path):
            r = _post(client, body)
            answers.append(r.text)
            results.append((name, status, loc, r.status_code, _loc(r)))
        # Schedules: frequency, cron, time zone, and the config inside.
        data = _job_config(service, fake)
        for name, body, status, loc in [
            ("schedule: every second", {"cron": "* * * * * *", "config": data}, 422, "cron"),
            ("schedule: every 10 seconds", {"cron": "*/10 * * * * *", "config": data}, 422, "cron"),
            ("schedule: not a cron", {"cron": "nope", "config": data}, 422, "cron"),
            ("schedule: unknown time zone", {"cron": "0 3 * * *", "timezone": "Mars/Olympus", "config": data}, 422, "timezone"),
            ("schedule: seeds outside", {"cron": "0 3 * * *", "config": _set(data, "seeds.path", "/etc/passwd")}, 422,
             "config.seeds.path"),
            ("schedule: unknown key", {"cron": "0 3 * * *", "config": data, "owner": "bob"}, 422, "owner"),
        ]:
            r = _post(client, body, url="/v1/schedules")
            answers.append(r.text)
            results.append((name, status, loc, r.status_code, _loc(r)))
        # Money: under a monthly cap a model without a server price is refused.
        from distilforge.schemas import Prices

        service.monthly_cap_usd = 10.0
        for name, body, status, loc, prices in [
            ("unpriced model under a monthly cap", data, 422, "teacher.model", {}),
            ("unpriced judge under a monthly cap", _set(data, "filters", [judge_of(fake)]), 422,
             "filters.0.teacher.model", {"fake-teacher": Prices(input_per_million=1, output_per_million=1)}),
            ("extra_body model swap under a cap", _set(data, "teacher.params.extra_body", {"model": "gpt-4o"}), 422,
             "teacher.params.extra_body.model", {}),
        ]:
            service.prices = prices
            r = _post(client, body)
            answers.append(r.text)
            results.append((name, status, loc, r.status_code, _loc(r)))
        service.monthly_cap_usd, service.prices = None, {}
        # Tokens and ids.
        for name, headers, url, status in [
            ("no token", {}, "/v1/jobs", 401),
            ("non-ASCII token", {"Authorization": "Bearer t\u00f6ken".encode()}, "/v1/jobs", 401),
            ("NUL in a job id", AUTH, "/v1/jobs/%00", 404),
            ("path in a job id", AUTH, "/v1/jobs/..%2f..%2fetc", 404),
        ]:
            results.append((name, status, "-", client.get(url, headers=headers).status_code, "-"))
        assert client.get("/v1/jobs", headers=AUTH).json() == []  # nothing was queued
    report = os.environ.get("DISTILFORGE_HOSTILE_REPORT")
    if report:
        with open(report, "a") as fh:
            for row in results:
                fh.write(json.dumps(row) + "\n")
    wrong = [r for r in results if (r[1], r[2]) != (r[3], r[4])]
    assert not wrong, wrong
    assert len(results) >= 40
    text = "\n".join(answers)
    assert "hunter2-planted" not in text and str(tmp_path) not in text and SECRET_KEY not in text


def judge_of(fake):
    return {"name": "judge", "teacher": {"backend": "openai", "model": "unpriced-judge", "base_url": fake.base_url,
                                         "api_key_env": "DISTILFORGE_TEST_KEY"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ServeProcess:
    """`distilforge serve` in a process of its own, as a team runs it (its own interpreter and GIL)."""

    def __init__(self, settings):
        self.port = _free_port()
        self.env = {**os.environ, "DATABASE_URL": settings.database_url, "DISTILFORGE_HOME": str(settings.home),
                    "DISTILFORGE_DATA_ROOTS": str(settings.data_roots[0]), "DISTILFORGE_API_TOKENS": "t0ken",
                    "DISTILFORGE_ALLOWED_TEACHERS": ",".join(settings.allowed_teachers),
                    "DISTILFORGE_TEACHER_KEY_ENVS": "DISTILFORGE_TEST_KEY", "DISTILFORGE_TEST_KEY": SECRET_KEY}

    def __enter__(self):
        import subprocess
        import sys

        import httpx

        self.proc = subprocess.Popen([sys.executable, "-m", "distilforge", "serve", "--host", "127.0.0.1", "--port",
                                      str(self.port), "--workers", "0"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("distilforge serve did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        code = self.proc.wait(15)
        # Stopped by us: a clean shutdown (checked only when the body passed, so its error is not hidden).
        assert exc[0] is not None or code in (0, -signal.SIGTERM), f"distilforge serve exited {code}"


def test_alias_bomb_is_refused_within_a_second_and_healthz_stays_fast(service, fake):
    """The 674-byte alias bomb of #11, sent by four clients at once, each again every 50 ms for 1.5 s, to
    `distilforge serve`: every one is a 422 within a second, and /healthz, polled meanwhile, answers
    within 100 ms."""
    import httpx

    body = _bomb_body(_job_config(service, fake))
    assert b"*h,*h" in body and len(BOMB) < 700
    with _ServeProcess(service) as url:
        health: list[float] = []
        stop = threading.Event()
        clients = [httpx.Client(base_url=url, timeout=30) for _ in range(5)]  # made before the clock starts

        def poll(http):
            while not stop.is_set():
                started = time.perf_counter()
                assert http.get("/healthz").status_code == 200
                health.append(time.perf_counter() - started)
                time.sleep(0.02)

        bombs = []
        ready = threading.Barrier(5)

        def bomb(http):
            ready.wait()
            until = time.perf_counter() + 1.5
            while time.perf_counter() < until:
                started = time.perf_counter()
                r = http.post("/v1/jobs", content=body, headers={**AUTH, "Content-Type": "application/yaml"})
                bombs.append((r.status_code, time.perf_counter() - started, r.json()["detail"][0]["loc"]))
                time.sleep(0.05)

        poller = threading.Thread(target=poll, args=(clients[0],))
        poller.start()
        threads = [threading.Thread(target=bomb, args=(http,)) for http in clients[1:]]
        for t in threads:
            t.start()
        time.sleep(0.3)
        seen_before = len(health)
        ready.wait()
        for t in threads:
            t.join(30)
        seen_after = len(health)
        stop.set()
        poller.join(10)
        for http in clients:
            http.close()
        assert httpx.get(f"{url}/v1/jobs", headers=AUTH).json() == []
    during = health[seen_before:seen_after + 1]
    timings = {"bombs": len(bombs), "bomb_max_s": max(b[1] for b in bombs),
               "bomb_median_s": sorted(b[1] for b in bombs)[len(bombs) // 2], "healthz_max_s": max(during),
               "healthz_median_s": sorted(during)[len(during) // 2], "healthz_n": len(during)}
    print("alias bomb timings:", json.dumps(timings))
    report = os.environ.get("DISTILFORGE_HOSTILE_REPORT")
    if report:
        with open(report + ".timings", "a") as fh:
            fh.write(json.dumps({"db": service.database_url.split(":")[0], **timings}) + "\n")
    assert len(bombs) >= 8 and {b[0] for b in bombs} == {422} and {b[2] for b in bombs} == {"(body)"}
    assert max(b[1] for b in bombs) < 1.0
    # /healthz keeps answering while the bombs are parsed; the figures live in the printed timings, the
    # bound is one that no load explains (a blocked loop would hold it for the whole attack).
    assert len(during) >= 10 and max(during) < 1.0


def test_owners_see_only_their_own_jobs_and_schedules(service, fake):
    settings = dataclasses.replace(service, api_tokens=["alice:tok-alice-1", "bob:tok-bob:2", "tok-bare-3"],
                                   admin_tokens=["root:tok-root-4"])
    alice = {"Authorization": "Bearer tok-alice-1"}
    bob = {"Authorization": "Bearer tok-bob:2"}  # split at the first ':' only
    bare = {"Authorization": "Bearer tok-bare-3"}
    root = {"Authorization": "Bearer tok-root-4"}
    with _client(settings, workers=0) as client:
        created = client.post("/v1/jobs", json=_job_config(settings, fake), headers=alice)
        assert created.status_code == 201 and created.json()["owner"] == "alice"
        job_id = created.json()["id"]
        assert client.post("/v1/jobs", json=_job_config(settings, fake), headers=bare).json()["owner"] == "default"
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/dataset", f"/v1/jobs/{job_id}/report"):
            assert client.get(path, headers=bob).status_code == 404
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bob).status_code == 404
        assert client.get("/v1/jobs", headers=bob).json() == []
        assert [j["id"] for j in client.get("/v1/jobs", headers=alice).json()] == [job_id]
        assert len(client.get("/v1/jobs", headers=root).json()) == 2
        assert client.get(f"/v1/jobs/{job_id}", headers=root).status_code == 200
        schedule = client.post("/v1/schedules", headers=alice, json={"cron": "0 3 * * *", "config": _job_config(settings, fake)})
        assert schedule.status_code == 201, schedule.text
        sid = schedule.json()["id"]
        assert client.get("/v1/schedules", headers=bob).json() == []
        assert client.delete(f"/v1/schedules/{sid}", headers=bob).status_code == 404
        assert client.post(f"/v1/schedules/{sid}/resume", headers=bob).status_code == 404
        assert [s["id"] for s in client.get("/v1/schedules", headers=root).json()] == [sid]
        assert all(not k.startswith("owner:alice") and sid not in k
                   for k in client.get("/v1/budget", headers=bob).json()["scopes"])
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=alice).json()["state"] == "cancelled"
        assert client.delete(f"/v1/schedules/{sid}", headers=alice).status_code == 204


def _wait_as(client, job_id, states, headers, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stuck in {job['state']}")


def _swap_to_link(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("swap", ["file", "folder", "between-check-and-open", "folder-between-check-and-open"])
def test_seeds_swapped_for_a_symlink_after_submission_are_never_read(service, fake, tmp_path, monkeypatch, swap):
    from distilforge.service.worker import Worker

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    root = service.data_roots[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    write_jsonl(outside / "seeds.jsonl", [{"question": f"LEAKED /etc/passwd line {i}", "answer": "#### 1"} for i in range(3)])
    (root / "team").mkdir()
    seeds = write_jsonl(root / "team" / "seeds.jsonl", [{"question": "1 + 2?", "answer": "#### 3"}])
    data = _job_config(service, fake)
    data["seeds"]["path"] = str(seeds)

    def swap_now():
        if swap.startswith("folder"):
            (root / "team").rename(root / "team.old")
            (root / "team").symlink_to(outside)
        else:
            _swap_to_link(seeds, outside / "seeds.jsonl")

    with _client(service, workers=0) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        if swap in ("file", "folder"):
            swap_now()
        else:  # the check at claim passes; the swap lands between the check and the open
            import distilforge.service.inputs as inputs

            real = inputs.resolve_input

            def racing(value, settings):
                resolved = real(value, settings)
                if value == str(seeds):
                    swap_now()
                return resolved

            monkeypatch.setattr(inputs, "resolve_input", racing)
        assert Worker(_store(service), service).run_once()
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        assert job["state"] == "failed" and "seeds.path" in job["error"], job
        assert str(tmp_path) not in job["error"]
        assert client.get(f"/v1/jobs/{job_id}/dataset", headers=AUTH).json()["splits"] == []
    assert not any("LEAKED" in json.dumps(r["body"]) for r in fake.requests) and not fake.requests


def test_a_run_folder_is_chosen_by_the_server_and_a_planted_symlink_is_refused(service, fake, tmp_path):
    from distilforge.service.worker import Worker

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    with _client(service, workers=0) as client:
        job_id = client.post("/v1/jobs", json=_job_config(service, fake), headers=AUTH).json()["id"]
        (service.runs_dir / job_id).symlink_to(victim, target_is_directory=True)
        assert Worker(_store(service), service).run_once()
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        assert job["state"] == "failed" and "run folder" in job["error"]
        # A clean job runs in DISTILFORGE_HOME/runs/<id>; its answers name no server path.
        ok = client.post("/v1/jobs", json=_job_config(service, fake), headers=AUTH).json()["id"]
        assert Worker(_store(service), service).run_once()
        assert _wait(client, ok, {"succeeded", "failed"})["state"] == "succeeded"
        listing = client.get(f"/v1/jobs/{ok}/dataset", headers=AUTH).json()
        assert listing == {"job": ok, "splits": ["rejected", "train", "validation"]}
        assert (service.runs_dir / ok / "inputs" / "seeds").is_dir()
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "precious"


def test_a_schedule_whose_endpoint_was_removed_pauses_and_its_queued_job_fails(service, fake):
    from distilforge.service.db import Job, Schedule
    from distilforge.service.scheduler import tick
    from distilforge.service.store import now
    from distilforge.service.worker import Worker

    store = _store(service)
    with _client(service, workers=0) as client:
        r = client.post("/v1/schedules", headers=AUTH, json={"cron": "* * * * *", "config": _job_config(service, fake)})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        queued = client.post("/v1/jobs", json=_job_config(service, fake), headers=AUTH).json()["id"]
        service.allowed_teachers.clear()  # the team removes the endpoint
        with store.sessions.begin() as s:
            s.get(Schedule, sid).last_checked = now() - timedelta(minutes=3)
        assert tick(store, service) == []
        listed = client.get("/v1/schedules", headers=AUTH).json()[0]
        assert listed["paused"] is True and "teacher.base_url" in listed["paused_reason"]
        with store.sessions.begin() as s:
            s.get(Schedule, sid).last_checked = now() - timedelta(minutes=3)
        assert tick(store, service) == []  # paused: it fires no more
        with store.sessions() as s:
            assert s.query(Job).filter(Job.schedule_id == sid).count() == 0
        assert Worker(store, service).run_once()
        job = client.get(f"/v1/jobs/{queued}", headers=AUTH).json()
        assert job["state"] == "failed" and "teacher.base_url" in job["error"]
        assert fake.requests == []  # the key never left
        r = client.post(f"/v1/schedules/{sid}/resume", headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "config.teacher.base_url"
        service.allowed_teachers.append(fake.base_url)
        assert client.post(f"/v1/schedules/{sid}/resume", headers=AUTH).json()["paused"] is False


def test_two_workers_race_for_one_journal_after_a_lease_expiry(service, fake, monkeypatch):
    """Worker A stalls (no heartbeat) mid-run; B claims the job after the lease expires. From B's claim
    on, no write of A's reaches the journal (exactly one writer), and A cannot finish the job."""
    from distilforge.core import journal as journal_mod
    from distilforge.schemas import JobConfig
    from distilforge.service import worker as worker_mod

    service = dataclasses.replace(service, lease_seconds=1.0)
    fake.latency = (0.25, 0.3)
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    store = _store(service)
    data = _job_config(service, fake, n=24)
    data["teacher"]["max_concurrency"] = 2
    job = store.submit(JobConfig.model_validate(data).model_dump(mode="json"), "", owner="default")
    events: list[tuple[str, int, bool]] = []
    lock = threading.Lock()
    # Ordered by events, not by timing, so that a loaded machine cannot reorder them: B claims only after A
    # has written, and A's later writes wait until B has claimed (A cannot finish first however slow B is).
    a_wrote, b_claimed_event = threading.Event(), threading.Event()
    real_claim, real_tx, real_beat = journal_mod.Journal._claim, journal_mod.Journal._transaction, worker_mod.JobControl._beat

    def claim(self, epoch):
        real_claim(self, epoch)
        with lock:
            events.append(("claim", epoch, True))
        if epoch == 2:
            b_claimed_event.set()

    def transaction(self, conn, ops):
        if self.fence == 1 and a_wrote.is_set():
            b_claimed_event.wait(60)
        try:
            result = real_tx(self, conn, ops)
        except journal_mod.FencedOut:
            with lock:
                events.append(("write", self.fence, False))
            raise
        with lock:
            events.append(("write", self.fence, True))
        if self.fence == 1:
            a_wrote.set()
        return result

    def beat(self):
        if self.epoch == 1:
            return  # worker A stalls: its lease runs out while its requests are still in flight
        real_beat(self)

    monkeypatch.setattr(journal_mod.Journal, "_claim", claim)
    monkeypatch.setattr(journal_mod.Journal, "_transaction", transaction)
    monkeypatch.setattr(worker_mod.JobControl, "_beat", beat)
    claimed = store.claim("A")
    a = threading.Thread(target=worker_mod.Worker(store, service, owner="A")._run, args=(claimed,))
    a.start()
    deadline = time.monotonic() + 30
    b = worker_mod.Worker(store, service, owner="B")
    assert a_wrote.wait(60), "worker A never wrote"
    while not b.run_once():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    a.join(60)
    done = store.get(job.id)
    assert done.state == "succeeded" and done.attempts == 2 and done.epoch == 2 and done.summary["kept"] == 24
    b_claimed = events.index(("claim", 2, True))
    assert ("write", 1, True) in events[:b_claimed]  # A was writing before
    assert ("write", 1, True) not in events[b_claimed:]  # and never after B's claim
    assert ("write", 1, False) in events[b_claimed:]  # it tried, and was fenced out
    journal = journal_mod.JournalReader(service.runs_dir / job.id)
    assert journal.epochs() == [2]
    assert journal.totals().answers == 24


def test_an_expired_lease_releases_its_monthly_reservations(service):
    from distilforge.service.budgets import Ledger, month_scopes
    from distilforge.service.db import Job

    store = _store(service)
    ledger = Ledger(store.sessions)
    job = store.submit({"seeds": {"path": "x"}}, "")
    caps = dict.fromkeys(month_scopes(None, "default"), 100.0)
    first = store.claim("dead")
    assert ledger.reserve(caps, 1.0, (job.id, first.epoch))
    with store.sessions.begin() as s:
        s.get(Job, job.id).lease_until = first.lease_until - timedelta(hours=1)
    second = store.claim("rescuer")
    assert second.epoch == 2
    assert not ledger.reserve(caps, 1.0, (job.id, 1))  # the dead epoch cannot reserve any more
    assert ledger.expire_holds(job.id, 2) == pytest.approx(1.0)
    usage = ledger.usage()
    assert all(v == {"spent_usd": 1.0, "reserved_usd": 0.0} for v in usage.values()), usage
    ledger.settle(list(caps), 1.0, 0.2, (job.id, 1))  # a late settle of the closed hold changes nothing
    assert ledger.usage() == usage
    assert ledger.reserve(caps, 0.5, (job.id, 2))
    assert ledger.close_holds(job.id, 2) == pytest.approx(0.5)
    assert all(v == {"spent_usd": 1.5, "reserved_usd": 0.0} for v in ledger.usage().values())


def test_planted_credentials_never_reach_a_file_row_answer_or_log(service, fake, tmp_path, caplog):
    from sqlalchemy import MetaData, select

    from distilforge.service.db import make_engine

    caplog.set_level("DEBUG")
    planted = ["pw-planted-77", "hunter22-planted", SECRET_KEY, "t0ken"]
    real_answer = fake._answer

    def echoing(body, headers, key, behaviour, kind, **kw):
        status, payload, extra = real_answer(body, headers, key, behaviour, kind, **kw)
        if status == 400:  # a server that echoes what it got, and a credential of its own
            message = f"bad request from {headers.get('Authorization')} see http://admin:hunter22-planted@internal.example/x"
            payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
        return status, payload, extra

    fake._answer = echoing
    fake.script["FAILS"] = Behaviour(always="400")
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    answers = []
    with _client(service) as client:
        good = _job_config(service, fake)
        good["generation"]["system_prompt"] = "Docs at https://reader:pw-planted-77@docs.example/x. Be brief."
        bad = _job_config(service, fake)
        write_jsonl(Path(bad["seeds"]["path"]), [{"question": "FAILS: 1 + 2?", "answer": "#### 3"}])
        leaky = _set(good, "teacher.base_url", fake.base_url.replace("//", "//u:pw-planted-77@"))
        ids = []
        for body in (good, bad, leaky):
            r = client.post("/v1/jobs", json=body, headers=AUTH)
            answers.append(r.text)
            if r.status_code == 201:
                ids.append(r.json()["id"])
        assert len(ids) == 2
        jobs = [_wait(client, i, {"succeeded", "failed"}) for i in ids]
        assert [j["state"] for j in jobs] == ["succeeded", "failed"]
        for i in ids:
            for path in (f"/v1/jobs/{i}", f"/v1/jobs/{i}/dataset", f"/v1/jobs/{i}/report"):
                answers.append(client.get(path, headers=AUTH).text)
        answers += [client.get(p, headers=AUTH).text for p in ("/v1/jobs", "/v1/budget", "/v1/schedules", "/metrics")]
        assert "bad request" in jobs[1]["error"]  # the teacher's error text, redacted
    leaks = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            leaks += [(str(path), p) for p in planted[:3] if p.encode() in content]
    engine = make_engine(service.database_url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        rows = [str(row) for table in meta.sorted_tables for row in conn.execute(select(table))]
    leaks += [("db", p) for p in planted[:3] for row in rows if p in row]
    leaks += [("answer", p) for p in planted for text in answers if p in text]
    leaks += [("log", p) for p in planted for line in caplog.text.splitlines() if p in line]
    assert not leaks, leaks
    assert any("***" in a for a in answers)  # redacted, not silently dropped
    assert not [a for a in answers if str(tmp_path) in a or str(service.home) in a]


def test_a_job_with_no_successful_request_ends_failed_with_the_reason(service, fake):
    fake.default = Behaviour(always="400")
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=_job_config(service, fake, n=3), headers=AUTH).json()["id"]
        job = _wait(client, job_id, {"succeeded", "failed", "cancelled"})
    assert job["state"] == "failed" and "400" in job["error"], job


def test_a_busy_job_keeps_its_lease_and_a_cancel_still_stops_it(service, fake, monkeypatch):
    """The job's event loop is kept busy (CPU-bound work in a filter): the heartbeat thread still
    renews the lease, so no second worker takes the job; a cancel stops it within seconds."""
    from distilforge.quality.simple import LengthFilter
    from distilforge.service.worker import Worker

    def busy(self, record):
        end = time.perf_counter() + 0.25
        while time.perf_counter() < end:
            pass
        return None

    monkeypatch.setattr(LengthFilter, "check", busy)
    service = dataclasses.replace(service, lease_seconds=1.0)
    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    data = _job_config(service, fake, n=60)
    data["teacher"]["max_concurrency"] = 2
    data["filters"] = [{"name": "length", "min_words": 0}]
    store = _store(service)
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        _wait(client, job_id, {"running"})
        rival = Worker(store, service, owner="rival")
        until = time.monotonic() + 3 * service.lease_seconds  # three leases' worth of busy work
        while time.monotonic() < until:
            assert not rival.run_once()  # the lease never lapses
            time.sleep(0.2)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 200
        started = time.monotonic()
        job = _wait(client, job_id, {"cancelled", "succeeded", "failed"}, timeout=30)
        assert job["state"] == "cancelled" and time.monotonic() - started < 8 and job["attempts"] == 1


def test_a_cancel_stops_training_within_seconds(service, fake, tiny_model):
    import shutil

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    student = service.data_roots[0] / "student-model"
    shutil.copytree(tiny_model, student)
    data = _job_config(service, fake, n=4)
    data["train"] = {"enabled": True, "student": str(student), "max_steps": 100_000, "batch_size": 2, "max_length": 96,
                     "lora": {"r": 2, "alpha": 4}}
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=data, headers=AUTH).json()["id"]
        run_dir = service.runs_dir / job_id
        deadline = time.monotonic() + 60
        while not (run_dir / ".checkpoints").exists() and not (run_dir / "run.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(2.0)  # training is under way
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["state"] == "running"
        client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
        started = time.monotonic()
        job = _wait(client, job_id, {"cancelled", "failed", "succeeded"}, timeout=30)
        assert job["state"] == "cancelled" and time.monotonic() - started < 10, job
    assert not (run_dir / "student").exists()


def test_metrics_are_prometheus_counts_read_cheaply(service, fake):
    from prometheus_client.parser import text_string_to_metric_families

    fake.default = Behaviour(["1 + 2 = 3.\nThe answer is 3."])
    with _client(service) as client:
        job_id = client.post("/v1/jobs", json=_job_config(service, fake, n=3), headers=AUTH).json()["id"]
        _wait(client, job_id, {"succeeded"})
        r = client.get("/metrics", headers=ADMIN)  # an operator's token (DISTILFORGE_METRICS_PUBLIC opens it)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("distilforge_jobs", (("state", "succeeded"),))] == 1
    assert samples[("distilforge_kept_total", ())] == 3 and samples[("distilforge_teacher_requests_total", ())] == 3
    assert samples[("distilforge_http_requests_total", ())] >= 2
    assert "# HELP distilforge_jobs " in r.text and "# TYPE distilforge_kept_total counter" in r.text
    assert job_id not in r.text and "default" not in r.text and str(service.home) not in r.text


def test_migration_0002_upgrades_a_0001_store(service):
    from datetime import UTC, datetime

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import JSON, DateTime, bindparam, text

    from distilforge.service.db import make_engine
    from distilforge.service.migrate import migrate

    engine = make_engine(service.database_url)
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parents[1] / "distilforge/service/migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    insert = text("INSERT INTO jobs (id, state, config, run_dir, created, updated, epoch, attempts, cancel_requested, "
                  "summary) VALUES ('old', 'succeeded', :c, '/x', :t, :t, 1, 1, 0, :s)").bindparams(
        bindparam("t", type_=DateTime(timezone=True)), bindparam("c", type_=JSON), bindparam("s", type_=JSON))
    with engine.begin() as conn:
        conn.execute(insert, {"t": datetime(2026, 1, 1, tzinfo=UTC), "c": {}, "s": {"kept": 7, "requests": {"sent": 9}}})
    migrate(engine)
    store = _store(service)
    assert store.get("old").owner == "default"
    counters = store.counters()
    assert counters["kept"] == 7 and counters["teacher_requests"] == 9


def test_server_prices_and_per_owner_caps(service, fake, monkeypatch):
    from distilforge.schemas import JobConfig, Prices
    from distilforge.service.prices import run_prices
    from distilforge.service.settings import parse_prices

    table = parse_prices(f"{fake.base_url}=0/0,my-model=1/2,*=5/15")
    config = JobConfig.model_validate(_job_config(service, fake))
    assert run_prices(config, table)[0] == Prices(input_per_million=0, output_per_million=0)  # the endpoint wins
    config.teacher.base_url = "https://api.openai.com/v1"
    config.teacher.model = "gpt-4o-mini"
    assert run_prices(config, table)[0].input_per_million == 0.15  # the built-in table
    config.teacher.model = "my-model"
    assert run_prices(config, table)[0].output_per_million == 2  # a model entry
    config.teacher.model = "unknown"
    assert run_prices(config, table)[0].output_per_million == 15  # the default
    assert run_prices(config, {})[1] == ["teacher"]
    config.filters = [JobConfig.model_validate({**_job_config(service, fake), "filters": [judge_of(fake)]}).filters[0]]
    table["unpriced-judge"] = Prices(input_per_million=3, output_per_million=4)
    config.filters[0].teacher.base_url = "https://api.openai.com/v1"  # not under the endpoint priced 0
    from distilforge.service.prices import apply_server_prices

    assert apply_server_prices(config, table).output_per_million == 15 and config.filters[0].prices.output_per_million == 4

    from distilforge.service.budgets import Ledger

    ledger_calls = []
    real_reserve = Ledger.reserve

    def counting(self, *args, **kwargs):
        ledger_calls.append(1)
        return real_reserve(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "reserve", counting)
    fake.default = Behaviour([" ".join(["word"] * 300) + "\nThe answer is 3."])
    settings = dataclasses.replace(service, api_tokens=["alice:tok-a-1", "bob:tok-b-2"], owner_caps={"alice": 1.0},
                                   prices={fake.base_url: Prices(input_per_million=1000.0, output_per_million=1000.0)})
    data = _job_config(settings, fake, n=20)
    data["teacher"]["params"]["max_tokens"] = 200
    with _client(settings, workers=1) as client:
        a = client.post("/v1/jobs", json=data, headers={"Authorization": "Bearer tok-a-1"}).json()["id"]
        b = client.post("/v1/jobs", json=data, headers={"Authorization": "Bearer tok-b-2"}).json()["id"]
        ja = _wait_as(client, a, {"succeeded", "stopped_budget", "failed"}, {"Authorization": "Bearer tok-a-1"})
        jb = _wait_as(client, b, {"succeeded", "stopped_budget", "failed"}, {"Authorization": "Bearer tok-b-2"})
        scopes = client.get("/v1/budget", headers={"Authorization": "Bearer tok-a-1"}).json()["scopes"]
    assert ja["state"] == "stopped_budget" and jb["state"] == "succeeded"
    mine = next(v for k, v in scopes.items() if k.startswith("owner:alice:"))
    assert mine["spent_usd"] <= 1.0 and mine["reserved_usd"] == pytest.approx(0.0, abs=1e-9)
    assert not any(k.startswith("owner:bob:") for k in scopes)
    # A refused reservation does not wake every waiting request to be refused again (a storm of ledger
    # transactions while the run's requests in flight settle): a few tries per request at most.
    assert len(ledger_calls) <= 3 * len(fake.requests) + 8, (len(ledger_calls), len(fake.requests))


def test_run_folders_and_the_store_stay_out_of_reach_inside_a_data_root(service, fake, tmp_path):
    """An admin who makes DISTILFORGE_HOME a data root still keeps run folders and the SQLite store out of
    every job's reach."""
    from distilforge.service.validate import resolve_input

    settings = dataclasses.replace(service, data_roots=[service.home])
    other = settings.runs_dir / "0123456789abcdef0123456789abcdef"
    (other / "parquet").mkdir(parents=True)
    write_jsonl(other / "parquet" / "x.jsonl", [{"question": "q", "answer": "#### 1"}])
    assert resolve_input(str(other / "parquet" / "x.jsonl"), settings) is None
    assert resolve_input("runs/0123456789abcdef0123456789abcdef/parquet/x.jsonl", settings) is None
    if settings.database_url.startswith("sqlite"):
        assert resolve_input(settings.database_url[len("sqlite:///"):], settings) is None
    mine = write_jsonl(settings.home / "mine.jsonl", [{"question": "q", "answer": "#### 1"}])
    assert resolve_input(str(mine), settings) == mine.resolve()
    with _client(settings, workers=0) as client:
        r = client.post("/v1/jobs", json=_set(_job_config(settings, fake), "seeds.path", str(other / "parquet" / "x.jsonl")),
                        headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "seeds.path"
