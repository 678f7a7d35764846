"""Monthly caps shared by every job and worker: the single-run reservation rule, made atomic in the DB.

A reservation is one conditional UPDATE per scope (`spent + reserved + x <= cap`), all scopes in one
transaction: PostgreSQL's row locks and SQLite's single writer make concurrent workers take turns,
so the sum of what all of them hold never passes a cap.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from distilforge.core.budget import Budget


def month_scopes(schedule_id: str | None) -> list[str]:
    month = datetime.now(UTC).strftime("%Y-%m")
    scopes = [f"global:{month}"]
    if schedule_id:
        scopes.append(f"schedule:{schedule_id}:{month}")
    return scopes


class Ledger:
    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions

    def _ensure(self, s: object, scopes: list[str]) -> None:
        for scope in scopes:
            s.execute(text("INSERT INTO budget_ledger (scope, spent_usd, reserved_usd) VALUES (:s, 0, 0) "  # type: ignore[attr-defined]
                           "ON CONFLICT (scope) DO NOTHING"), {"s": scope})

    def reserve(self, caps: dict[str, float | None], usd: float) -> bool:
        with self.sessions.begin() as s:
            self._ensure(s, list(caps))
            for scope, cap in caps.items():
                result = s.execute(text(
                    "UPDATE budget_ledger SET reserved_usd = reserved_usd + :x WHERE scope = :s "
                    "AND (CAST(:cap AS DOUBLE PRECISION) IS NULL OR spent_usd + reserved_usd + :x <= CAST(:cap AS DOUBLE PRECISION))"),
                    {"x": usd, "s": scope, "cap": cap})
                if result.rowcount != 1:
                    s.rollback()
                    return False
        return True

    def settle(self, scopes: list[str], reserved: float, actual: float) -> None:
        with self.sessions.begin() as s:
            for scope in scopes:
                s.execute(text(
                    "UPDATE budget_ledger SET spent_usd = spent_usd + :a, "
                    "reserved_usd = CASE WHEN reserved_usd > :r THEN reserved_usd - :r ELSE 0 END WHERE scope = :s"),
                    {"r": reserved, "a": actual, "s": scope})

    def usage(self) -> dict[str, dict[str, float]]:
        with self.sessions() as s:
            rows = s.execute(text("SELECT scope, spent_usd, reserved_usd FROM budget_ledger ORDER BY scope")).all()
        return {r[0]: {"spent_usd": round(r[1], 6), "reserved_usd": round(r[2], 6)} for r in rows}


@dataclass
class LedgerBudget(Budget):
    """A run's budget that also reserves against the service's monthly caps.

    The ledger is a database: every call goes to a worker thread, never blocking the event loop.
    """

    ledger: Ledger | None = None
    caps: dict[str, float | None] = field(default_factory=dict)
    blocked_by: str | None = None

    async def reserve(self, usd: float) -> bool:
        if not await super().reserve(usd):
            return False
        if self.ledger is not None and self.caps and usd > 0 and \
                not await asyncio.to_thread(self.ledger.reserve, self.caps, usd):
            await super().release(usd)
            self.blocked_by = "monthly cap"
            return False
        return True

    async def settle(self, reserved_usd: float, actual_usd: float, stage: str) -> None:
        await super().settle(reserved_usd, actual_usd, stage)
        if self.ledger is not None and self.caps and (reserved_usd or actual_usd):
            await asyncio.to_thread(self.ledger.settle, list(self.caps), reserved_usd, actual_usd)

    async def charge_unknown(self, reserved_usd: float, stage: str) -> None:
        await super().charge_unknown(reserved_usd, stage)
        if self.ledger is not None and self.caps and reserved_usd:
            await asyncio.to_thread(self.ledger.settle, list(self.caps), reserved_usd, reserved_usd)

    async def release(self, reserved_usd: float) -> None:
        await super().release(reserved_usd)
        if self.ledger is not None and self.caps and reserved_usd:
            await asyncio.to_thread(self.ledger.settle, list(self.caps), reserved_usd, 0.0)
