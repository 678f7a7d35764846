"""The HTTP API (FastAPI; OpenAPI docs at /docs). Every /v1 route needs a bearer token.

A job or schedule belongs to the owner of the token that made it; other owners get 404 on it, admin
tokens see everything. Bodies are size-capped before they are read (413), parsed off the event loop
within a node budget, and checked against the settings (422 naming the field). Answers carry no
secrets and no absolute server paths.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, update

from distilforge.core.run_files import scrub
from distilforge.schemas.config import JobConfig
from distilforge.schemas.service import BodyError, find_nul, parse_body
from distilforge.service.budgets import Ledger
from distilforge.service.db import STATES, Job, Schedule, make_engine, make_sessions
from distilforge.service.migrate import migrate
from distilforge.service.routes.browse import add_browse_routes, content_type, job_stage, schedule_timing
from distilforge.service.settings import Principal, Settings
from distilforge.service.store import COUNTERS, Store, now
from distilforge.service.validate import check_job, cron_problem, stored_form
from distilforge.service.worker import public_data, public_text, redact_logs

bearer = HTTPBearer(auto_error=False)
log = logging.getLogger("distilforge.api")
_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class JobOut(BaseModel):
    id: str
    state: str
    owner: str
    stage: str | None = None  # generate / train / eval while running
    progress: dict[str, Any] | None = None
    kept: int | None = None
    rejected: dict[str, int] | None = None
    tokens: dict[str, int] | None = None
    cost_usd: float | None = None
    stopped: str | None = None
    error: str | None = None
    attempts: int = 0
    created: datetime
    updated: datetime
    schedule_id: str | None = None


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(max_length=128)
    timezone: str = Field(default="UTC", max_length=64)
    config: dict[str, Any]
    monthly_cap_usd: float | None = Field(default=None, gt=0)


def job_out(job: Job) -> JobOut:
    summary = job.summary or {}
    return JobOut(id=job.id, state=job.state, owner=job.owner, stage=job_stage(job), progress=public_data(job.progress),
                  kept=summary.get("kept"), rejected=summary.get("rejected"), tokens=summary.get("tokens"),
                  cost_usd=summary.get("cost_usd"), stopped=summary.get("stopped"), error=public_text(job.error),
                  attempts=job.attempts, created=job.created, updated=job.updated, schedule_id=job.schedule_id)


def schedule_out(x: Schedule, session: Any = None) -> dict[str, Any]:
    return {"id": x.id, "owner": x.owner, "cron": x.cron, "timezone": x.timezone, "monthly_cap_usd": x.monthly_cap_usd,
            "paused": bool(x.paused), "paused_reason": public_text(x.paused_reason), **schedule_timing(x, session)}


def _loc(parts: Any, prefix: str = "") -> str:
    dotted = ".".join(str(p) for p in parts if not (isinstance(p, str) and p.startswith("function-")))
    return f"{prefix}{dotted}" if dotted else (prefix.rstrip(".") or "(body)")


def _errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    return [{"loc": _loc(e["loc"], prefix),
             "msg": "unknown key" if e["type"] == "extra_forbidden" else public_text(e["msg"], 500)}  # type: ignore[dict-item]
            for e in exc.errors()]


def unprocessable(problems: list[tuple[str, str]]) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": public_text(msg, 500)} for loc, msg in problems])


class Guard:
    """Pure ASGI middleware: counts requests, and refuses bodies over the cap (413) before they are
    read whole, by Content-Length and by the bytes actually streamed."""

    def __init__(self, app: Any, max_bytes: int, counter: Any):
        self.app, self.max_bytes, self.counter = app, max_bytes, counter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.counter.inc()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"detail": f"the body is larger than {self.max_bytes} bytes"}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(status_code=413, detail=f"the body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


class Service:
    """What every route shares: settings, the store and ledger, the parse pool, the token check."""

    def __init__(self, settings: Settings, store: Store, ledger: Ledger):
        self.settings, self.store, self.ledger = settings, store, ledger
        # Parsing and checking bodies happens here, never on the event loop.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="distilforge-parse")

    async def off_loop(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def authorize(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        principal = self.settings.principal(credentials.credentials) if credentials else None
        if principal is None:
            raise HTTPException(status_code=401, detail="a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return principal

    async def body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return await self.off_loop(parse_body, raw, content_type(request.headers.get("content-type")),
                                       self.settings.limits.config_nodes)
        except BodyError as exc:
            raise unprocessable([(exc.loc, exc.msg)]) from None

    def checked(self, data: Any, owner: str, schedule_cap: float | None = None, prefix: str = "") -> dict[str, Any]:
        """The config as it will be stored and run (normalised, scrubbed), or a 422."""
        if not isinstance(data, dict):
            raise unprocessable([(prefix.rstrip(".") or "(body)", "a job config is a mapping")])
        nul = find_nul(data)
        if nul is not None:
            raise unprocessable([(f"{prefix}{nul}" if nul != "(body)" else prefix.rstrip(".") or nul,
                                  "NUL bytes are not allowed")])
        try:
            config = JobConfig.model_validate(data)
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=_errors(exc, prefix)) from None
        problems = check_job(config, self.settings, owner=owner, schedule_cap=schedule_cap)
        if problems:
            raise unprocessable([(f"{prefix}{loc}", msg) for loc, msg in problems])
        return scrub(stored_form(config, self.settings))

    def admit(self, owner: str) -> None:
        """Per-owner quotas: submissions per minute (429 with Retry-After; refused submissions were never
        stored, so they do not count) and queued jobs."""
        limits = self.settings.limits
        count, oldest = self.store.submissions_since(owner, now() - timedelta(seconds=60))
        if count >= limits.submissions_per_minute:
            wait = 60 - (now() - oldest).total_seconds() if oldest is not None else 60
            raise HTTPException(status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))},
                                detail=f"at most {limits.submissions_per_minute} submissions a minute per owner "
                                       "(DISTILFORGE_LIMITS_SUBMISSIONS_PER_MINUTE)")
        if self.store.count_queued(owner) >= limits.queued_jobs:
            raise HTTPException(status_code=429, headers={"Retry-After": "60"},
                                detail=f"at most {limits.queued_jobs} queued jobs per owner "
                                       "(DISTILFORGE_LIMITS_QUEUED_JOBS)")


def create_app(settings: Settings | None = None, *, workers: int = 1, scheduler: bool = True) -> FastAPI:
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    settings = settings or Settings()
    settings.register_secrets()
    redact_logs()
    _warn_about_entries(settings)
    engine = make_engine(settings.database_url)
    migrate(engine)  # serve creates and migrates its database on start
    store = Store(make_sessions(engine), settings.lease_seconds)
    svc = Service(settings, store, Ledger(store.sessions))
    app = FastAPI(title="distilforge", version=__import__("distilforge").__version__)
    app.state.store, app.state.settings, app.state.stop = store, settings, threading.Event()
    app.state.threads = []
    registry = CollectorRegistry()
    http_requests = PromCounter("distilforge_http_requests", "HTTP requests received", registry=registry)
    registry.register(StoreCollector(store))
    app.add_middleware(Guard, max_bytes=settings.limits.body_bytes, counter=http_requests)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": _loc(e.get("loc", ())), "msg": public_text(str(e.get("msg", "invalid")), 500)}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, public_text(f"{type(exc).__name__}: {exc}"))
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.on_event("startup")
    def start_background() -> None:
        _start_background(app, store, settings, workers, scheduler)

    @app.on_event("shutdown")
    def stop_background() -> None:
        app.state.stop.set()
        svc.pool.shutdown(wait=False, cancel_futures=True)

    app.include_router(_job_routes(svc))
    app.include_router(_schedule_routes(svc))
    app.include_router(_ops_routes(svc, registry))
    return app


def _start_background(app: FastAPI, store: Store, settings: Settings, workers: int, scheduler: bool) -> None:
    from distilforge.service.scheduler import run_scheduler
    from distilforge.service.worker import Worker

    for i in range(workers):
        worker = Worker(store, settings, owner=f"serve-{uuid.uuid4().hex[:6]}-{i}")
        thread = threading.Thread(target=worker.run_forever, args=(app.state.stop,), daemon=True)
        thread.start()
        app.state.threads.append(thread)
    if scheduler:
        thread = threading.Thread(target=run_scheduler, args=(store, settings, app.state.stop), daemon=True)
        thread.start()
        app.state.threads.append(thread)


def _scope(who: Principal) -> str | None:
    return None if who.admin else who.owner


def _job_routes(svc: Service) -> APIRouter:
    router, store, settings = APIRouter(), svc.store, svc.settings
    authorize = svc.authorize

    def _submit(data: Any, owner: str) -> Job:
        svc.admit(owner)  # after the (bounded) parse: a body that does not parse never costs a query
        config = svc.checked(data, owner)
        job_id = uuid.uuid4().hex
        return store.submit(config, str(settings.runs_dir / job_id), job_id=job_id, owner=owner)

    @router.post("/v1/jobs", status_code=201, response_model=JobOut)
    async def submit(request: Request, who: Principal = Depends(authorize)) -> JobOut:
        data = await svc.body(request)
        return job_out(await svc.off_loop(_submit, data, who.owner))

    @router.get("/v1/jobs", response_model=list[JobOut])
    def list_jobs(limit: int = 100, who: Principal = Depends(authorize)) -> list[JobOut]:
        return [job_out(j) for j in store.list(max(1, min(limit, 1000)), owner=_scope(who))]

    def _job(job_id: str, who: Principal) -> Job:
        job = store.get(job_id, owner=_scope(who)) if _ID.match(job_id) else None
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        return job

    @router.get("/v1/jobs/{job_id}", response_model=JobOut)
    def get_job(job_id: str, who: Principal = Depends(authorize)) -> JobOut:
        return job_out(_job(job_id, who))

    @router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut)
    def cancel(job_id: str, who: Principal = Depends(authorize)) -> JobOut:
        _job(job_id, who)
        return job_out(store.cancel(job_id))  # type: ignore[arg-type]

    def _server_paths(text: str, run_dir: Path) -> str:
        for prefix in sorted({str(run_dir), str(settings.runs_dir), str(settings.home), sys.prefix,
                              *(str(r) for r in settings.data_roots)}, key=len, reverse=True):
            text = text.replace(prefix + "/", "").replace(prefix, ".")
        return text

    @router.get("/v1/jobs/{job_id}/report")
    def report(job_id: str, who: Principal = Depends(authorize)) -> Response:
        run_dir = Path(_job(job_id, who).run_dir)
        if not (run_dir / "run.json").exists():
            raise HTTPException(status_code=409, detail="the job has not produced a run yet")
        from distilforge.report import build_report

        html_path, _ = build_report(run_dir)
        return HTMLResponse(_server_paths(html_path.read_text(encoding="utf-8"), run_dir))

    @router.get("/v1/jobs/{job_id}/dataset")
    def dataset(job_id: str, split: str | None = None, who: Principal = Depends(authorize)) -> Response:
        run_dir = Path(_job(job_id, who).run_dir)
        parquet = run_dir / "parquet"
        files = sorted(p.stem for p in parquet.glob("*.parquet")) if parquet.is_dir() else []
        if split is None:
            return JSONResponse({"job": job_id, "splits": files})
        if split not in files:  # only names listed from the run folder: no path reaches the filesystem
            raise HTTPException(status_code=404, detail="no such split")
        return FileResponse(parquet / f"{split}.parquet", media_type="application/octet-stream",
                            filename=f"{job_id}-{split}.parquet")

    add_browse_routes(router, authorize, _job, _server_paths)
    return router


def _new_schedule(svc: Service, data: Any, owner: str) -> dict[str, Any]:
    settings = svc.settings
    if not isinstance(data, dict):
        raise unprocessable([("(body)", "a schedule is a mapping")])
    nul = find_nul({k: v for k, v in data.items() if k != "config"})
    if nul is not None:
        raise unprocessable([(nul, "NUL bytes are not allowed")])
    try:
        body = ScheduleIn.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(status_code=422, detail=_errors(exc)) from None
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(body.timezone)
    except Exception:
        raise unprocessable([("timezone", "unknown time zone")]) from None
    problem = cron_problem(body.cron, body.timezone, settings.limits.schedule_seconds)
    if problem:
        raise unprocessable([("cron", problem)])
    config = svc.checked(body.config, owner, body.monthly_cap_usd, prefix="config.")
    if svc.store.count_schedules(owner) >= settings.limits.schedules:
        raise HTTPException(status_code=429, detail=f"at most {settings.limits.schedules} schedules per owner "
                                                    "(DISTILFORGE_LIMITS_SCHEDULES); delete one first")
    schedule = Schedule(id=uuid.uuid4().hex, cron=body.cron, timezone=body.timezone, config=config,
                        monthly_cap_usd=body.monthly_cap_usd, created=now(), last_checked=now(), owner=owner,
                        paused=0, paused_reason=None)
    with svc.store.sessions.begin() as s:
        s.add(schedule)
    return schedule_out(schedule)


def _schedules(who: Principal) -> Any:
    query = select(Schedule).order_by(Schedule.created)
    return query if who.admin else query.where(Schedule.owner == who.owner)


def _schedule_routes(svc: Service) -> APIRouter:
    router, store, settings = APIRouter(), svc.store, svc.settings
    authorize = svc.authorize

    @router.post("/v1/schedules", status_code=201)
    async def create_schedule(request: Request, who: Principal = Depends(authorize)) -> dict[str, Any]:
        data = await svc.body(request)
        return await svc.off_loop(_new_schedule, svc, data, who.owner)

    @router.get("/v1/schedules")
    def list_schedules(who: Principal = Depends(authorize)) -> list[dict[str, Any]]:
        with store.sessions() as s:
            return [schedule_out(x, s) for x in s.scalars(_schedules(who))]

    def _schedule(s: Any, schedule_id: str, who: Principal) -> Schedule:
        schedule = s.get(Schedule, schedule_id) if _ID.match(schedule_id) else None
        if schedule is None or (not who.admin and schedule.owner != who.owner):
            raise HTTPException(status_code=404, detail="no such schedule")
        return schedule

    @router.delete("/v1/schedules/{schedule_id}", status_code=204)
    def delete_schedule(schedule_id: str, who: Principal = Depends(authorize)) -> Response:
        with store.sessions.begin() as s:
            schedule = _schedule(s, schedule_id, who)
            # Past runs stay; they only lose the link to the schedule.
            s.execute(update(Job).where(Job.schedule_id == schedule_id).values(schedule_id=None))
            s.delete(schedule)
        return Response(status_code=204)

    @router.post("/v1/schedules/{schedule_id}/resume")
    def resume_schedule(schedule_id: str, who: Principal = Depends(authorize)) -> dict[str, Any]:
        from distilforge.service.scheduler import schedule_problems

        with store.sessions.begin() as s:
            schedule = _schedule(s, schedule_id, who)
            problems = schedule_problems(schedule, settings)
            if problems:
                raise unprocessable([(loc if loc == "cron" else f"config.{loc}", msg) for loc, msg in problems])
            schedule.paused, schedule.paused_reason, schedule.last_checked = 0, None, now()
            return schedule_out(schedule, s)

    return router


def _ops_routes(svc: Service, registry: Any) -> APIRouter:
    router, store, settings = APIRouter(), svc.store, svc.settings

    def ping() -> None:
        with store.sessions() as s:
            s.execute(select(1))

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        await asyncio.to_thread(ping)
        return {"status": "ok"}

    @router.get("/metrics")
    def prometheus(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if not settings.metrics_public:  # the counts cover every owner: an admin token, unless made public
            who = svc.authorize(credentials)
            if not who.admin:
                raise HTTPException(status_code=403, detail="/metrics needs an admin token "
                                                            "(or DISTILFORGE_METRICS_PUBLIC=1)")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/budget")
    def budget(who: Principal = Depends(svc.authorize)) -> dict[str, Any]:
        if who.admin:
            return {"monthly_cap_usd": settings.monthly_cap_usd, "owner_caps_usd": settings.owner_caps,
                    "scopes": svc.ledger.usage()}
        with store.sessions() as s:
            mine = [x.id for x in s.scalars(_schedules(who))]
        # An owner sees their own spend (their owner and schedule scopes), not the others' through the global one.
        prefixes = [f"owner:{who.owner}:", *(f"schedule:{i}:" for i in mine)]
        return {"monthly_cap_usd": settings.monthly_cap_usd, "owner_cap_usd": settings.owner_caps.get(who.owner),
                "scopes": svc.ledger.usage(prefixes)}

    return router


def _warn_about_entries(settings: Settings) -> None:
    from distilforge.core.urls import UrlError, parse_url

    for entry in settings.allowed_teachers:
        try:
            parse_url(entry)
        except UrlError as exc:
            log.warning("DISTILFORGE_ALLOWED_TEACHERS: an entry is ignored (%s)", exc)


class StoreCollector:
    """/metrics: job counts by state and totals over finished jobs, read from a few rows when scraped.

    Counts only: no job ids, owners, paths or names.
    """

    def __init__(self, store: Store):
        self.store = store

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self.store.sessions() as s:
            states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        jobs = GaugeMetricFamily("distilforge_jobs", "Jobs by state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], states.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("distilforge_queue_depth", "Jobs waiting for a worker", value=states.get("queued", 0))
        counters = self.store.counters()
        helps = {"teacher_requests": "Teacher requests sent", "rate_limited": "Teacher requests answered 429",
                 "prompt_tokens": "Prompt tokens", "completion_tokens": "Completion tokens",
                 "kept": "Records kept", "rejected": "Records rejected", "spend_usd": "Teacher spend (USD)"}
        for name in COUNTERS:
            yield CounterMetricFamily(f"distilforge_{name}", f"{helps[name]}, over finished jobs",
                                      value=counters.get(name, 0.0))
