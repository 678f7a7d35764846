"""Job store operations: submit, claim with a lease, heartbeat, finish, cancel, requeue.

A lease is (owner, lease_until, epoch). Claiming bumps the epoch; every later write by the worker
names the epoch it holds and succeeds only if it still matches, so a worker that lost its lease (it
stalled past `lease_until` and another worker took the job) cannot change the job any more.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import sessionmaker

from distilforge.service.db import FINAL_STATES, Job


class LeaseLost(RuntimeError):
    """This worker no longer holds the job's lease: it must stop writing."""


def now() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, sessions: sessionmaker, lease_seconds: float = 30.0):
        self.sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self.dialect = sessions.kw["bind"].dialect.name

    # -- API side --------------------------------------------------------------------------------
    def submit(self, config: dict[str, Any], run_dir: str, *, job_id: str | None = None,
               schedule_id: str | None = None, fire_time: datetime | None = None) -> Job:
        stamp = now()
        job = Job(id=job_id or uuid.uuid4().hex, state="queued", config=config, run_dir=run_dir, created=stamp,
                  updated=stamp, epoch=0, attempts=0, cancel_requested=0, schedule_id=schedule_id, fire_time=fire_time)
        with self.sessions.begin() as s:
            s.add(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self.sessions() as s:
            return s.get(Job, job_id)

    def list(self, limit: int = 100) -> list[Job]:
        with self.sessions() as s:
            return list(s.scalars(select(Job).order_by(Job.created.desc()).limit(limit)))

    def cancel(self, job_id: str) -> Job | None:
        """Queued jobs cancel at once; running ones when their worker next looks (within seconds)."""
        with self.sessions.begin() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                return None
            if job.state == "queued":
                job.state, job.updated = "cancelled", now()
            elif job.state == "running":
                job.cancel_requested, job.updated = 1, now()
            return job

    # -- worker side -----------------------------------------------------------------------------
    def claim(self, owner: str) -> Job | None:
        """Take the oldest queued job, or a running one whose lease expired, atomically."""
        stamp, until = now(), now() + self.lease
        with self.sessions.begin() as s:
            if self.dialect == "postgresql":
                job = s.scalars(
                    select(Job).where((Job.state == "queued") | ((Job.state == "running") & (Job.lease_until < stamp)))
                    .order_by(Job.created).limit(1).with_for_update(skip_locked=True)
                ).first()
                if job is None:
                    return None
                job.state, job.lease_owner, job.lease_until = "running", owner, until
                job.epoch, job.attempts, job.updated = job.epoch + 1, job.attempts + 1, stamp
                return job
            # SQLite has no SKIP LOCKED; one UPDATE ... RETURNING is atomic under its single writer.
            row = s.execute(text(
                "UPDATE jobs SET state='running', lease_owner=:owner, lease_until=:until, epoch=epoch+1, "
                "attempts=attempts+1, updated=:stamp WHERE id = (SELECT id FROM jobs WHERE state='queued' "
                "OR (state='running' AND lease_until < :stamp) ORDER BY created LIMIT 1) RETURNING id"
            ), {"owner": owner, "until": until, "stamp": stamp}).first()
            return s.get(Job, row[0]) if row else None

    def _guarded(self, job_id: str, epoch: int, **values: Any) -> None:
        with self.sessions.begin() as s:
            result = s.execute(update(Job).where(Job.id == job_id, Job.epoch == epoch, Job.state == "running")
                               .values(updated=now(), **values))
            if result.rowcount != 1:
                raise LeaseLost(f"job {job_id}: lease epoch {epoch} is no longer current")

    def heartbeat(self, job_id: str, epoch: int, progress: dict[str, Any] | None = None) -> bool:
        """Extend the lease; returns whether a cancel was requested."""
        values: dict[str, Any] = {"lease_until": now() + self.lease}
        if progress is not None:
            values["progress"] = progress
        self._guarded(job_id, epoch, **values)
        job = self.get(job_id)
        return bool(job and job.cancel_requested)

    def check(self, job_id: str, epoch: int) -> None:
        with self.sessions() as s:
            current = s.scalar(select(Job.epoch).where(Job.id == job_id, Job.state == "running"))
        if current != epoch:
            raise LeaseLost(f"job {job_id}: lease epoch {epoch} is no longer current")

    def finish(self, job_id: str, epoch: int, state: str, *, summary: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        assert state in FINAL_STATES, state
        self._guarded(job_id, epoch, state=state, summary=summary, error=error, lease_owner=None, lease_until=None)
