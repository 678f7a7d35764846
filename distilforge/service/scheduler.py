"""Cron schedules. Each tick inserts one job per due fire time; the (schedule_id, fire_time) unique
constraint makes that happen once however many schedulers tick at the same moment.

Missed fires while the service was down are coalesced: after a gap, only the most recent missed
fire time runs (a daily job down for a week runs once, not seven times).

At each fire the schedule's whole config is checked again against the settings as they are then
(an endpoint removed from the allowlist, a seeds file swapped, a cap with no price for the model):
a schedule that no longer passes is paused with the reason, and fires no more until resumed.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from distilforge.schemas import JobConfig
from distilforge.service.db import Schedule
from distilforge.service.settings import Settings
from distilforge.service.store import Store, now
from distilforge.service.validate import check_job, cron_problem

log = logging.getLogger("distilforge.scheduler")


def due_fire(schedule: Schedule, until: datetime) -> datetime | None:
    """The latest fire time in (last_checked, until], or None."""
    tz = ZoneInfo(schedule.timezone)
    it = croniter(schedule.cron, schedule.last_checked.astimezone(tz))
    fire = None
    while True:
        candidate = it.get_next(datetime)
        if candidate > until.astimezone(tz):
            return fire
        fire = candidate


def schedule_problems(schedule: Schedule, settings: Settings) -> list[tuple[str, str]]:
    """Why this schedule may not fire now (empty: it may)."""
    problem = cron_problem(schedule.cron, schedule.timezone, settings.limits.schedule_seconds)
    if problem:
        return [("cron", problem)]
    try:
        config = JobConfig.model_validate(schedule.config)
    except ValidationError as exc:
        return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
    return check_job(config, settings, owner=schedule.owner, schedule_cap=schedule.monthly_cap_usd, stored=True)


def pause(store: Store, schedule_id: str, reason: str) -> None:
    from distilforge.service.worker import public_text

    with store.sessions.begin() as s:
        s.execute(update(Schedule).where(Schedule.id == schedule_id).values(paused=1, paused_reason=public_text(reason)))


def tick(store: Store, settings: Settings, at: datetime | None = None) -> list[str]:
    """Create the jobs that are due; returns their ids (empty when another scheduler won the race)."""
    at = at or now()
    created = []
    with store.sessions() as s:
        schedules = list(s.scalars(select(Schedule).where(Schedule.paused == 0)))
    for schedule in schedules:
        problems = []
        if cron_problem(schedule.cron, schedule.timezone, settings.limits.schedule_seconds) is None:
            fire = due_fire(schedule, at)
        else:
            fire, problems = None, schedule_problems(schedule, settings)
        if fire is not None:
            problems = schedule_problems(schedule, settings)
        if problems:
            reason = "; ".join(f"{loc}: {msg}" for loc, msg in problems)
            pause(store, schedule.id, reason)
            log.warning("schedule %s paused: %s", schedule.id, reason)
        elif fire is not None:
            job_id = f"{schedule.id[:12]}-{int(fire.timestamp())}"
            try:
                store.submit(schedule.config, str(settings.runs_dir / job_id), job_id=job_id, schedule_id=schedule.id,
                             fire_time=fire.astimezone(ZoneInfo("UTC")), owner=schedule.owner)
                created.append(job_id)
            except IntegrityError:
                pass  # this fire time already has its job: another scheduler got there first
        with store.sessions.begin() as s:
            row = s.get(Schedule, schedule.id)
            if row is not None and row.last_checked < at:
                row.last_checked = at
    return created


def run_scheduler(store: Store, settings: Settings, stop: threading.Event, every: float = 15.0) -> None:
    while not stop.is_set():
        try:
            tick(store, settings)
        except Exception as exc:
            from distilforge.service.worker import public_text

            log.error("scheduler tick failed: %s", public_text(f"{type(exc).__name__}: {exc}"))
        stop.wait(every)
