"""/v1/schedules: cron schedules of a job config, with their next fire and last job; delete and resume."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import ValidationError
from sqlalchemy import select, update

from distilforge.schemas.service import ScheduleIn, find_nul
from distilforge.service.db import Job, Schedule
from distilforge.service.routes.deps import (
    ID,
    Service,
    authorize,
    get_service,
    owned_schedules,
    unprocessable,
    validation_errors,
)
from distilforge.service.settings import Principal
from distilforge.service.store import now
from distilforge.service.validate import cron_problem
from distilforge.service.worker import public_text

router = APIRouter()


def schedule_timing(schedule: Any, session: Any) -> dict[str, Any]:
    """A schedule's next fire time (None while paused) and its last job (id, state, created)."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    next_fire = None
    if not schedule.paused:
        try:
            next_fire = croniter(schedule.cron, datetime.now(ZoneInfo(schedule.timezone))).get_next(datetime).isoformat()
        except (ValueError, KeyError):
            next_fire = None
    last = session.scalars(select(Job).where(Job.schedule_id == schedule.id)
                           .order_by(Job.created.desc()).limit(1)).first() if session is not None else None
    return {"next_fire": next_fire,
            "last_job": {"id": last.id, "state": last.state, "created": last.created.isoformat()} if last else None}


def schedule_out(x: Schedule, session: Any = None) -> dict[str, Any]:
    return {"id": x.id, "owner": x.owner, "cron": x.cron, "timezone": x.timezone, "monthly_cap_usd": x.monthly_cap_usd,
            "paused": bool(x.paused), "paused_reason": public_text(x.paused_reason), **schedule_timing(x, session)}


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
        raise HTTPException(status_code=422, detail=validation_errors(exc)) from None
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


def _schedule(s: Any, schedule_id: str, who: Principal) -> Schedule:
    schedule = s.get(Schedule, schedule_id) if ID.match(schedule_id) else None
    if schedule is None or (not who.admin and schedule.owner != who.owner):
        raise HTTPException(status_code=404, detail="no such schedule")
    return schedule


@router.post("/v1/schedules", status_code=201)
async def create_schedule(request: Request, who: Principal = Depends(authorize),
                          svc: Service = Depends(get_service)) -> dict[str, Any]:
    data = await svc.body(request)
    return await svc.off_loop(_new_schedule, svc, data, who.owner)


@router.get("/v1/schedules")
def list_schedules(who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> list[dict[str, Any]]:
    with svc.store.sessions() as s:
        return [schedule_out(x, s) for x in s.scalars(owned_schedules(who))]


@router.delete("/v1/schedules/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: str, who: Principal = Depends(authorize),
                    svc: Service = Depends(get_service)) -> Response:
    with svc.store.sessions.begin() as s:
        schedule = _schedule(s, schedule_id, who)
        # Past runs stay; they only lose the link to the schedule.
        s.execute(update(Job).where(Job.schedule_id == schedule_id).values(schedule_id=None))
        s.delete(schedule)
    return Response(status_code=204)


@router.post("/v1/schedules/{schedule_id}/resume")
def resume_schedule(schedule_id: str, who: Principal = Depends(authorize),
                    svc: Service = Depends(get_service)) -> dict[str, Any]:
    from distilforge.service.scheduler import schedule_problems

    with svc.store.sessions.begin() as s:
        schedule = _schedule(s, schedule_id, who)
        problems = schedule_problems(schedule, svc.settings)
        if problems:
            raise unprocessable([(loc if loc == "cron" else f"config.{loc}", msg) for loc, msg in problems])
        schedule.paused, schedule.paused_reason, schedule.last_checked = 0, None, now()
        return schedule_out(schedule, s)
