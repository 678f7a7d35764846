"""Job store operations: submit, claim with a lease, heartbeat, finish, cancel, requeue.

A lease is (owner, lease_until, epoch). Claiming bumps the epoch; every later write by the worker
names the epoch it holds and succeeds only if it still matches, so a worker that lost its lease (it
stalled past `lease_until` and another worker took the job) cannot change the job any more.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import aliased, sessionmaker

from distilforge.service.db import FINAL_STATES, Counter, Job, Schedule

COUNTERS = ("teacher_requests", "rate_limited", "prompt_tokens", "completion_tokens", "kept", "rejected", "spend_usd")


def counter_increments(summary: dict[str, Any]) -> dict[str, float]:
    """What a finished job adds to the /metrics totals (counts and money only)."""
    req, tok = summary.get("requests") or {}, summary.get("tokens") or {}
    return {"teacher_requests": req.get("sent", 0) or 0, "rate_limited": req.get("rate_limited", 0) or 0,
            "prompt_tokens": tok.get("prompt", 0) or 0, "completion_tokens": tok.get("completion", 0) or 0,
            "kept": summary.get("kept") or 0, "rejected": sum((summary.get("rejected") or {}).values()),
            "spend_usd": summary.get("cost_usd") or 0.0}


def _fair_order(stamp: datetime) -> Any:
    """How many jobs the candidate's owner has running under a live lease (fewest first)."""
    running = aliased(Job)
    return (select(func.count()).select_from(running)
            .where(running.owner == Job.owner, running.state == "running", running.lease_until >= stamp)
            .correlate(Job).scalar_subquery())


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
               schedule_id: str | None = None, fire_time: datetime | None = None, owner: str = "default") -> Job:
        stamp = now()
        job = Job(id=job_id or uuid.uuid4().hex, state="queued", config=config, run_dir=run_dir, created=stamp,
                  updated=stamp, epoch=0, attempts=0, cancel_requested=0, schedule_id=schedule_id, fire_time=fire_time,
                  owner=owner)
        with self.sessions.begin() as s:
            s.add(job)
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another owner (None: any owner)."""
        with self.sessions() as s:
            job = s.get(Job, job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    def list(self, limit: int = 100, owner: str | None = None) -> list[Job]:
        with self.sessions() as s:
            query = select(Job).order_by(Job.created.desc()).limit(limit)
            if owner is not None:
                query = query.where(Job.owner == owner)
            return list(s.scalars(query))

    def submissions_since(self, owner: str, since: datetime) -> tuple[int, datetime | None]:
        """(jobs this owner submitted over the API since `since`, the oldest one's time): refused
        submissions are never stored, so they do not count; schedule fires are not submissions."""
        with self.sessions() as s:
            count, oldest = s.execute(select(func.count(), func.min(Job.created)).where(
                Job.owner == owner, Job.schedule_id.is_(None), Job.created > since)).one()
        return int(count or 0), oldest

    def count_queued(self, owner: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).where(Job.owner == owner, Job.state == "queued")) or 0)

    def count_schedules(self, owner: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Schedule).where(Schedule.owner == owner)) or 0)

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
        """Take a queued job, or a running one whose lease expired, atomically: fairly across owners (the
        owner with the fewest jobs running first, so one owner's queue cannot starve another's), then the
        oldest."""
        stamp, until = now(), now() + self.lease
        with self.sessions.begin() as s:
            if self.dialect == "postgresql":
                job = s.scalars(
                    select(Job).where((Job.state == "queued") | ((Job.state == "running") & (Job.lease_until < stamp)))
                    .order_by(_fair_order(stamp), Job.created).limit(1).with_for_update(skip_locked=True)
                ).first()
                if job is None:
                    return None
                job.state, job.lease_owner, job.lease_until = "running", owner, until
                job.epoch, job.attempts, job.updated = job.epoch + 1, job.attempts + 1, stamp
                return job
            # SQLite has no SKIP LOCKED; one UPDATE ... RETURNING is atomic under its single writer.
            row = s.execute(text(
                "UPDATE jobs SET state='running', lease_owner=:owner, lease_until=:until, epoch=epoch+1, "
                "attempts=attempts+1, updated=:stamp WHERE id = (SELECT id FROM jobs AS j WHERE state='queued' "
                "OR (state='running' AND lease_until < :stamp) ORDER BY (SELECT count(*) FROM jobs AS r "
                "WHERE r.owner = j.owner AND r.state = 'running' AND r.lease_until >= :stamp), created LIMIT 1) "
                "RETURNING id"
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

    def check_lease(self, job_id: str, epoch: int) -> None:
        """LeaseLost unless `epoch` is still the running job's lease."""
        with self.sessions() as s:
            current = s.scalar(select(Job.epoch).where(Job.id == job_id, Job.state == "running"))
        if current != epoch:
            raise LeaseLost(f"job {job_id}: lease epoch {epoch} is no longer current")

    def set_run_dir(self, job_id: str, epoch: int, run_dir: str) -> None:
        self._guarded(job_id, epoch, run_dir=run_dir)

    def finish(self, job_id: str, epoch: int, state: str, *, summary: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        """The final state, guarded by the epoch; the job's counts join the /metrics totals in the same
        transaction."""
        assert state in FINAL_STATES, state
        with self.sessions.begin() as s:
            result = s.execute(update(Job).where(Job.id == job_id, Job.epoch == epoch, Job.state == "running")
                               .values(updated=now(), state=state, summary=summary, error=error, lease_owner=None,
                                       lease_until=None))
            if result.rowcount != 1:
                raise LeaseLost(f"job {job_id}: lease epoch {epoch} is no longer current")
            counts = counter_increments(summary or {})
            for name in COUNTERS:
                s.execute(text("INSERT INTO counters (name, value) VALUES (:n, 0) ON CONFLICT (name) DO NOTHING"),
                          {"n": name})
                if counts[name]:
                    s.execute(update(Counter).where(Counter.name == name).values(value=Counter.value + counts[name]))

    def counters(self) -> dict[str, float]:
        with self.sessions() as s:
            return {c.name: c.value for c in s.scalars(select(Counter))}
