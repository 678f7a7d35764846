"""Monthly caps shared by every job and worker: the single-run reservation rule, made atomic in the DB.

A reservation is one conditional UPDATE per scope (`spent + reserved + x <= cap`), all scopes in one
transaction: PostgreSQL's row locks and SQLite's single writer make concurrent workers take turns,
so the sum of what all of them hold never passes a cap.

Scopes: `global:<YYYY-MM>` (DISTILFORGE_MONTHLY_CAP_USD), `owner:<name>:<YYYY-MM>`
(DISTILFORGE_OWNER_CAPS), `schedule:<id>:<YYYY-MM>` (the schedule's own cap).

Every reservation is also recorded against the job's lease epoch (`ledger_holds`), in the same
transaction, and only while that epoch still holds the job. When a job is claimed after its lease
expired, what earlier epochs still hold is converted to spend at worst case (those requests may
have been billed) and the holds are closed: a dead worker's reservations do not stay reserved
forever, and a late settle from a worker that lost its lease changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from distilforge.core.budget import Budget

Hold = tuple[str, int]  # (job id, lease epoch)


def month_scopes(schedule_id: str | None, owner: str | None = None) -> list[str]:
    month = datetime.now(UTC).strftime("%Y-%m")
    scopes = [f"global:{month}"]
    if owner:
        scopes.append(f"owner:{owner}:{month}")
    if schedule_id:
        scopes.append(f"schedule:{schedule_id}:{month}")
    return scopes


class Ledger:
    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions
        self.dialect = sessions.kw["bind"].dialect.name
        self._known: set[str] = set()

    def _ensure(self, scopes: list[str]) -> None:
        """The scopes' rows exist (created in a transaction of their own, once per process)."""
        missing = [scope for scope in scopes if scope not in self._known]
        if not missing:
            return
        with self.sessions.begin() as s:
            for scope in missing:
                s.execute(text("INSERT INTO budget_ledger (scope, spent_usd, reserved_usd) VALUES (:s, 0, 0) "
                               "ON CONFLICT (scope) DO NOTHING"), {"s": scope})
        self._known.update(missing)

    def _holds_lease(self, s: object, hold: Hold) -> bool:
        # A plain read, no row lock: a share lock here would let a stream of reservations starve the
        # heartbeat's UPDATE of the same row. An epoch that changes between this read and the commit
        # leaves a hold that the job's next finish (`close_holds`) converts at worst case.
        epoch = s.execute(text("SELECT epoch FROM jobs WHERE id = :j AND state = 'running'"),  # type: ignore[attr-defined]
                          {"j": hold[0]}).scalar()
        return epoch == hold[1]

    def reserve(self, caps: dict[str, float | None], usd: float, hold: Hold | None = None) -> bool:
        # Lock order, in every transaction here: the job's hold, then the scopes in `caps` order;
        # a reservation and a settle of the same job, in two threads, never wait on each other in a cycle.
        self._ensure(list(caps))
        with self.sessions.begin() as s:
            if hold is not None:
                if not self._holds_lease(s, hold):
                    s.rollback()
                    return False
                s.execute(text(
                    "INSERT INTO ledger_holds (job_id, epoch, scopes, reserved_usd, open) VALUES (:j, :e, :sc, :x, 1) "
                    "ON CONFLICT (job_id, epoch) DO UPDATE SET reserved_usd = ledger_holds.reserved_usd + excluded.reserved_usd"),
                    {"j": hold[0], "e": hold[1], "sc": json.dumps(list(caps)), "x": usd})
            for scope, cap in caps.items():
                result = s.execute(text(
                    "UPDATE budget_ledger SET reserved_usd = reserved_usd + :x WHERE scope = :s "
                    "AND (CAST(:cap AS DOUBLE PRECISION) IS NULL OR spent_usd + reserved_usd + :x <= CAST(:cap AS DOUBLE PRECISION))"),
                    {"x": usd, "s": scope, "cap": cap})
                if result.rowcount != 1:
                    s.rollback()
                    return False
        return True

    def _move(self, s: object, scopes: list[str], reserved: float, actual: float) -> None:
        for scope in scopes:
            s.execute(text(  # type: ignore[attr-defined]
                "UPDATE budget_ledger SET spent_usd = spent_usd + :a, "
                "reserved_usd = CASE WHEN reserved_usd > :r THEN reserved_usd - :r ELSE 0 END WHERE scope = :s"),
                {"r": reserved, "a": actual, "s": scope})

    def settle(self, scopes: list[str], reserved: float, actual: float, hold: Hold | None = None) -> None:
        with self.sessions.begin() as s:
            if hold is not None:
                result = s.execute(text(
                    "UPDATE ledger_holds SET reserved_usd = CASE WHEN reserved_usd > :r THEN reserved_usd - :r ELSE 0 END "
                    "WHERE job_id = :j AND epoch = :e AND open = 1"), {"r": reserved, "j": hold[0], "e": hold[1]})
                if result.rowcount != 1:
                    return  # the hold was closed: already counted as spent at worst case
            self._move(s, scopes, reserved, actual)

    def _close(self, job_id: str, condition: str, epoch: int) -> float:
        lock = " FOR UPDATE" if self.dialect == "postgresql" else ""
        converted = 0.0
        with self.sessions.begin() as s:
            rows = s.execute(text(
                f"SELECT epoch, scopes, reserved_usd FROM ledger_holds WHERE job_id = :j AND open = 1 AND epoch {condition} :e"
                f"{lock}"), {"j": job_id, "e": epoch}).all()
            for held_epoch, scopes, reserved in rows:
                if reserved > 0:
                    self._move(s, json.loads(scopes), reserved, reserved)
                    converted += reserved
                s.execute(text("UPDATE ledger_holds SET open = 0, reserved_usd = 0 WHERE job_id = :j AND epoch = :e"),
                          {"j": job_id, "e": held_epoch})
        return converted

    def expire_holds(self, job_id: str, epoch: int) -> float:
        """A new epoch claimed the job: what older epochs hold becomes spend at worst case. Returns it."""
        return self._close(job_id, "<", epoch)

    def close_holds(self, job_id: str, epoch: int) -> float:
        """The job finished: anything still held (in flight when it failed) becomes spend at worst case."""
        return self._close(job_id, "<=", epoch)

    def usage(self, scopes: list[str] | None = None) -> dict[str, dict[str, float]]:
        with self.sessions() as s:
            rows = s.execute(text("SELECT scope, spent_usd, reserved_usd FROM budget_ledger ORDER BY scope")).all()
        return {r[0]: {"spent_usd": round(r[1], 6), "reserved_usd": round(r[2], 6)} for r in rows
                if scopes is None or any(r[0].startswith(p) for p in scopes)}


@dataclass
class LedgerBudget(Budget):
    """A run's budget that also reserves against the service's monthly caps.

    The ledger is a database, so it is used in chunks: the run reserves an allowance there (a few
    percent of the tightest cap) and lends it to its requests, and settlements are written back in
    batches (every `flush_usd` of released reservations, or every `flush_seconds`). The ledger always
    holds at least what the run has in flight or may owe, so the caps hold across every job and
    worker, while a run at hundreds of requests a second makes a few ledger transactions a second, on
    a worker thread, never on the event loop. `close` returns what is left.
    """

    ledger: Ledger | None = None
    caps: dict[str, float | None] = field(default_factory=dict)
    hold: Hold | None = None
    blocked_by: str | None = None
    allowance: float = 0.0  # reserved in the ledger, not yet lent to a request
    owed: float = 0.0  # settled here, not yet written to the ledger
    returned: float = 0.0  # reservations closed here, not yet released in the ledger
    flush_seconds: float = 0.5
    _refill: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _last_flush: float = 0.0

    def __getstate__(self) -> dict[str, object]:
        # A copy in a Ray actor reconnects to the store from its own environment (DATABASE_URL, or
        # SQLite under DISTILFORGE_HOME): no connection, and no URL with a password, travels.
        state = super().__getstate__()
        state.pop("_refill", None)
        state["ledger"] = None if self.ledger is None else "reconnect"
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._refill = asyncio.Lock()
        if self.ledger == "reconnect":
            from distilforge.service.db import make_engine, make_sessions
            from distilforge.service.settings import Settings

            self.ledger = Ledger(make_sessions(make_engine(Settings().database_url)))

    def portable(self) -> LedgerBudget:
        """The budget as a Ray actor holds it (see __getstate__)."""
        return self

    @property
    def _sharing(self) -> bool:
        return self.ledger is not None and bool(self.caps)

    def _chunk(self, usd: float) -> float:
        caps = [c for c in self.caps.values() if c is not None]
        return max(usd, min(caps) * 0.02 if caps else 1.0)

    async def reserve(self, usd: float) -> bool:
        if not await super().reserve(usd):
            return False
        if not self._sharing or usd <= 0:
            return True
        async with self._refill:
            if self.allowance + 1e-12 < usd:
                need = usd - self.allowance
                chunk = self._chunk(need)
                granted = await asyncio.to_thread(self.ledger.reserve, self.caps, chunk, self.hold)  # type: ignore[union-attr]
                if not granted and chunk > need:  # near the cap: just what this request needs
                    chunk = need
                    granted = await asyncio.to_thread(self.ledger.reserve, self.caps, chunk, self.hold)  # type: ignore[union-attr]
                if not granted:
                    # Undone quietly (no wake-up of the waiters: they wake when something settles).
                    self.reserved = max(0.0, self.reserved - usd)
                    if self.reserved <= 1e-12:
                        self._changed.set()
                    self.blocked_by = "monthly cap"
                    return False
                self.allowance += chunk
            self.allowance = max(0.0, self.allowance - usd)
        return True

    async def _flush(self, force: bool = False) -> None:
        if not self._sharing or not (self.returned or self.owed):
            return
        now = asyncio.get_running_loop().time()
        if not force and self.returned < self._chunk(0.0) and now - self._last_flush < self.flush_seconds:
            return
        returned, owed, self.returned, self.owed, self._last_flush = self.returned, self.owed, 0.0, 0.0, now
        await asyncio.to_thread(self.ledger.settle, list(self.caps), returned, owed, self.hold)  # type: ignore[union-attr]

    async def settle(self, reserved_usd: float, actual_usd: float, stage: str) -> None:
        self.returned += reserved_usd
        self.owed += actual_usd
        await super().settle(reserved_usd, actual_usd, stage)
        await self._flush()

    async def charge_unknown(self, reserved_usd: float, stage: str) -> None:
        self.returned += reserved_usd
        self.owed += reserved_usd
        await super().charge_unknown(reserved_usd, stage)
        await self._flush()

    async def release(self, reserved_usd: float) -> None:
        self.returned += reserved_usd
        await super().release(reserved_usd)
        await self._flush()

    async def close(self) -> None:
        """Write back what is owed and give the unused allowance back to the other jobs."""
        async with self._refill:
            self.returned += self.allowance
            self.allowance = 0.0
        await self._flush(force=True)
