"""Cron schedules. Each tick inserts one job per due fire time; the (schedule_id, fire_time) unique
constraint makes that happen once however many schedulers tick at the same moment.

Missed fires while the service was down are coalesced: after a gap, only the most recent missed
fire time runs (a daily job down for a week runs once, not seven times).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from distilforge.service.db import Schedule
from distilforge.service.store import Store, now

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


def tick(store: Store, runs_dir: Path, at: datetime | None = None) -> list[str]:
    """Create the jobs that are due; returns their ids (empty when another scheduler won the race)."""
    at = at or now()
    created = []
    with store.sessions() as s:
        schedules = list(s.scalars(select(Schedule)))
    for schedule in schedules:
        fire = due_fire(schedule, at)
        if fire is not None:
            job_id = f"{schedule.id[:12]}-{int(fire.timestamp())}"
            try:
                store.submit(schedule.config, str(runs_dir / job_id), job_id=job_id, schedule_id=schedule.id,
                             fire_time=fire.astimezone(ZoneInfo("UTC")))
                created.append(job_id)
            except IntegrityError:
                pass  # this fire time already has its job: another scheduler got there first
        with store.sessions.begin() as s:
            row = s.get(Schedule, schedule.id)
            if row is not None and row.last_checked < at:
                row.last_checked = at
    return created


def run_scheduler(store: Store, runs_dir: Path, stop: threading.Event, every: float = 15.0) -> None:
    while not stop.is_set():
        try:
            tick(store, runs_dir)
        except Exception:
            log.exception("scheduler tick failed")
        stop.wait(every)
