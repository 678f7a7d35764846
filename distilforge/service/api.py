"""The HTTP API (FastAPI; OpenAPI docs at /docs). Every /v1 route needs a bearer token."""

from __future__ import annotations

import secrets
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select, update

from distilforge.core.config import JobConfig
from distilforge.service.budgets import Ledger
from distilforge.service.db import Job, Schedule, make_engine, make_sessions
from distilforge.service.migrate import migrate
from distilforge.service.settings import Settings
from distilforge.service.store import Store, now
from distilforge.service.validate import check_job

bearer = HTTPBearer(auto_error=False)


class JobOut(BaseModel):
    id: str
    state: str
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
    cron: str
    timezone: str = "UTC"
    config: dict[str, Any]
    monthly_cap_usd: float | None = Field(default=None, gt=0)


def job_out(job: Job) -> JobOut:
    summary = job.summary or {}
    return JobOut(id=job.id, state=job.state, progress=job.progress, kept=summary.get("kept"),
                  rejected=summary.get("rejected"), tokens=summary.get("tokens"), cost_usd=summary.get("cost_usd"),
                  stopped=summary.get("stopped"), error=job.error, attempts=job.attempts, created=job.created,
                  updated=job.updated, schedule_id=job.schedule_id)


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"loc": ".".join(str(p) for p in e["loc"]), "msg": "unknown key" if e["type"] == "extra_forbidden" else e["msg"]}
            for e in exc.errors()]


def create_app(settings: Settings | None = None, *, workers: int = 1, scheduler: bool = True) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    migrate(engine)  # serve creates and migrates its database on start
    store = Store(make_sessions(engine), settings.lease_seconds)
    ledger = Ledger(store.sessions)
    app = FastAPI(title="distilforge", version=__import__("distilforge").__version__)
    app.state.store, app.state.settings, app.state.stop = store, settings, threading.Event()
    app.state.threads = []
    metrics = {"http_requests": 0}

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        tokens = settings.api_tokens
        given = credentials.credentials if credentials else ""
        if not tokens or not any(secrets.compare_digest(given, t) for t in tokens):
            raise HTTPException(status_code=401, detail="a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        metrics["http_requests"] += 1
        return await call_next(request)

    @app.on_event("startup")
    def start_background() -> None:
        from distilforge.service.scheduler import run_scheduler
        from distilforge.service.worker import Worker

        for i in range(workers):
            worker = Worker(store, settings, owner=f"serve-{uuid.uuid4().hex[:6]}-{i}")
            thread = threading.Thread(target=worker.run_forever, args=(app.state.stop,), daemon=True)
            thread.start()
            app.state.threads.append(thread)
        if scheduler:
            thread = threading.Thread(target=run_scheduler, args=(store, settings.runs_dir, app.state.stop), daemon=True)
            thread.start()
            app.state.threads.append(thread)

    @app.on_event("shutdown")
    def stop_background() -> None:
        app.state.stop.set()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        with store.sessions() as s:
            s.execute(select(1))
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        with store.sessions() as s:
            states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            summaries = [j for j in s.scalars(select(Job.summary)) if j]
        lines = ["# TYPE distilforge_http_requests_total counter", f"distilforge_http_requests_total {metrics['http_requests']}",
                 "# TYPE distilforge_jobs gauge"]
        lines += [f'distilforge_jobs{{state="{st}"}} {states.get(st, 0)}' for st in
                  ("queued", "running", "succeeded", "failed", "cancelled", "stopped_budget")]
        lines += ["# TYPE distilforge_queue_depth gauge", f"distilforge_queue_depth {states.get('queued', 0)}"]
        totals = {"teacher_requests": 0, "rate_limited": 0, "prompt_tokens": 0, "completion_tokens": 0, "kept": 0,
                  "rejected": 0, "spend_usd": 0.0}
        for summary in summaries:
            req, tok = summary.get("requests") or {}, summary.get("tokens") or {}
            totals["teacher_requests"] += req.get("sent", 0)
            totals["rate_limited"] += req.get("rate_limited", 0)
            totals["prompt_tokens"] += tok.get("prompt", 0)
            totals["completion_tokens"] += tok.get("completion", 0)
            totals["kept"] += summary.get("kept") or 0
            totals["rejected"] += sum((summary.get("rejected") or {}).values())
            totals["spend_usd"] += summary.get("cost_usd") or 0.0
        for name, value in totals.items():
            lines += [f"# TYPE distilforge_{name}_total counter", f"distilforge_{name}_total {value}"]
        return "\n".join(lines) + "\n"

    async def _config(request: Request) -> dict[str, Any]:
        body = await request.body()
        kind = request.headers.get("content-type", "")
        try:
            data = yaml.safe_load(body) if "yaml" in kind else __import__("json").loads(body or b"{}")
        except Exception as exc:
            raise HTTPException(status_code=422, detail=[{"loc": "(body)", "msg": f"not valid {'YAML' if 'yaml' in kind else 'JSON'}: {exc}"}]) from None
        if not isinstance(data, dict):
            raise HTTPException(status_code=422, detail=[{"loc": "(body)", "msg": "a job config is a mapping"}])
        return data

    def _validated(data: dict[str, Any]) -> JobConfig:
        try:
            config = JobConfig.model_validate(data)
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=_errors(exc)) from None
        problems = check_job(config, settings)
        if problems:
            raise HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg} for loc, msg in problems])
        return config

    @app.post("/v1/jobs", status_code=201, dependencies=[Depends(authorize)], response_model=JobOut)
    async def submit(request: Request) -> JobOut:
        config = _validated(await _config(request))
        job_id = uuid.uuid4().hex
        run_dir = Path(config.output.dir) if config.output.dir else settings.runs_dir / job_id
        job = store.submit(config.model_dump(mode="json"), str(run_dir), job_id=job_id)
        return job_out(job)

    @app.get("/v1/jobs", dependencies=[Depends(authorize)], response_model=list[JobOut])
    def list_jobs(limit: int = 100) -> list[JobOut]:
        return [job_out(j) for j in store.list(limit)]

    def _job(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorize)], response_model=JobOut)
    def get_job(job_id: str) -> JobOut:
        return job_out(_job(job_id))

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=[Depends(authorize)], response_model=JobOut)
    def cancel(job_id: str) -> JobOut:
        _job(job_id)
        return job_out(store.cancel(job_id))  # type: ignore[arg-type]

    @app.get("/v1/jobs/{job_id}/report", dependencies=[Depends(authorize)])
    def report(job_id: str) -> Response:
        run_dir = Path(_job(job_id).run_dir)
        if not (run_dir / "run.json").exists():
            raise HTTPException(status_code=409, detail="the job has not produced a run yet")
        from distilforge.report import build_report

        html_path, _ = build_report(run_dir)
        return HTMLResponse(html_path.read_text(encoding="utf-8"))

    @app.get("/v1/jobs/{job_id}/dataset", dependencies=[Depends(authorize)])
    def dataset(job_id: str, split: str | None = None) -> Response:
        run_dir = Path(_job(job_id).run_dir)
        parquet = run_dir / "parquet"
        files = sorted(p.stem for p in parquet.glob("*.parquet")) if parquet.exists() else []
        if split is None:
            return JSONResponse({"run_dir": str(run_dir), "dataset": str(run_dir / "dataset"), "splits": files})
        if split not in files:  # only names listed from the run folder: no path reaches the filesystem
            raise HTTPException(status_code=404, detail=f"no split {split!r}; have {files}")
        return FileResponse(parquet / f"{split}.parquet", media_type="application/octet-stream",
                            filename=f"{job_id}-{split}.parquet")

    @app.post("/v1/schedules", status_code=201, dependencies=[Depends(authorize)])
    def create_schedule(body: ScheduleIn) -> dict[str, Any]:
        from croniter import croniter

        if not croniter.is_valid(body.cron):
            raise HTTPException(status_code=422, detail=[{"loc": "cron", "msg": f"not a cron expression: {body.cron}"}])
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(body.timezone)
        except Exception:
            raise HTTPException(status_code=422, detail=[{"loc": "timezone", "msg": f"unknown time zone {body.timezone}"}]) from None
        config = _validated(body.config)
        schedule = Schedule(id=uuid.uuid4().hex, cron=body.cron, timezone=body.timezone,
                            config=config.model_dump(mode="json"), monthly_cap_usd=body.monthly_cap_usd,
                            created=now(), last_checked=now())
        with store.sessions.begin() as s:
            s.add(schedule)
        return {"id": schedule.id, "cron": schedule.cron, "timezone": schedule.timezone,
                "monthly_cap_usd": schedule.monthly_cap_usd}

    @app.get("/v1/schedules", dependencies=[Depends(authorize)])
    def list_schedules() -> list[dict[str, Any]]:
        with store.sessions() as s:
            return [{"id": x.id, "cron": x.cron, "timezone": x.timezone, "monthly_cap_usd": x.monthly_cap_usd}
                    for x in s.scalars(select(Schedule))]

    @app.delete("/v1/schedules/{schedule_id}", status_code=204, dependencies=[Depends(authorize)])
    def delete_schedule(schedule_id: str) -> Response:
        with store.sessions.begin() as s:
            schedule = s.get(Schedule, schedule_id)
            if schedule is None:
                raise HTTPException(status_code=404, detail=f"no schedule {schedule_id}")
            # Past runs stay; they only lose the link to the schedule.
            s.execute(update(Job).where(Job.schedule_id == schedule_id).values(schedule_id=None))
            s.delete(schedule)
        return Response(status_code=204)

    @app.get("/v1/budget", dependencies=[Depends(authorize)])
    def budget() -> dict[str, Any]:
        return {"monthly_cap_usd": settings.monthly_cap_usd, "scopes": ledger.usage()}

    return app
