"""What every route depends on: the app's one `Service` (settings, store, ledger, the parse pool) and the
bearer token check, both as FastAPI dependencies, plus the 422 shapes and the owner-checked lookups."""

from __future__ import annotations

import asyncio
import math
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy import select

from distilforge.core.run_files import scrub
from distilforge.schemas import JobConfig
from distilforge.schemas.service import BodyError, find_nul, parse_body
from distilforge.service.budgets import Ledger
from distilforge.service.db import Job, Schedule
from distilforge.service.settings import Principal, Settings
from distilforge.service.store import Store, now
from distilforge.service.validate import check_job, stored_form
from distilforge.service.worker import public_text

bearer = HTTPBearer(auto_error=False)
ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def error_loc(parts: Any, prefix: str = "") -> str:
    dotted = ".".join(str(p) for p in parts if not (isinstance(p, str) and p.startswith("function-")))
    return f"{prefix}{dotted}" if dotted else (prefix.rstrip(".") or "(body)")


def validation_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    return [{"loc": error_loc(e["loc"], prefix),
             "msg": "unknown key" if e["type"] == "extra_forbidden" else public_text(e["msg"], 500)}  # type: ignore[dict-item]
            for e in exc.errors()]


def unprocessable(problems: list[tuple[str, str]]) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": public_text(msg, 500)} for loc, msg in problems])


def content_type(header: str | None) -> str:
    """The type a job body is read as: JSON or YAML as declared; none (or curl's default form type, sent by
    `curl --data-binary @job.yaml` without -H) is read as YAML, which also reads JSON; anything else is a 415."""
    kind = (header or "").split(";")[0].strip().lower()
    if "json" in kind or "yaml" in kind:
        return kind
    if kind in ("", "application/x-www-form-urlencoded", "text/plain"):
        return "application/yaml"
    raise HTTPException(status_code=415, detail=f"a job is sent as application/json or application/yaml, not {kind}")


def scope(who: Principal) -> str | None:
    """The owner whose rows `who` sees; None (every owner) for an admin token."""
    return None if who.admin else who.owner


def owned_schedules(who: Principal) -> Any:
    query = select(Schedule).order_by(Schedule.created)
    return query if who.admin else query.where(Schedule.owner == who.owner)


class Service:
    """What every route shares: settings, the store and ledger, the parse pool, the metrics registry."""

    def __init__(self, settings: Settings, store: Store, ledger: Ledger, registry: Any = None):
        self.settings, self.store, self.ledger, self.registry = settings, store, ledger, registry
        # Parsing and checking bodies happens here, never on the event loop.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="distilforge-parse")

    async def off_loop(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def principal(self, credentials: HTTPAuthorizationCredentials | None) -> Principal:
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
            raise HTTPException(status_code=422, detail=validation_errors(exc, prefix)) from None
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

    def job(self, job_id: str, who: Principal) -> Job:
        """The owner-checked lookup: another owner's job is a 404, as is one that does not exist."""
        job = self.store.get(job_id, owner=scope(who)) if ID.match(job_id) else None
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        return job

    def server_paths(self, text: str, run_dir: Path) -> str:
        """`text` without the server's absolute paths (run folder, homes, data roots, the interpreter)."""
        settings = self.settings
        for prefix in sorted({str(run_dir), str(settings.runs_dir), str(settings.home), sys.prefix,
                              *(str(r) for r in settings.data_roots)}, key=len, reverse=True):
            text = text.replace(prefix + "/", "").replace(prefix, ".")
        return text


async def get_service(request: Request) -> Service:
    """The dependency every route takes: the one `Service` the app was assembled with (async: no thread hop)."""
    return request.app.state.service


def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
              svc: Service = Depends(get_service)) -> Principal:
    """The dependency of every /v1 route: the token's owner, or a 401."""
    return svc.principal(credentials)
