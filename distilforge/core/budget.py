"""The spend cap: one `Budget` per run that every paid teacher call goes through.

Before a request its worst case is reserved (`reserve`); the real cost settles it (`settle`); a
request the server refused (429, a 5xx with a readable error) releases it (`release`); an attempt
whose outcome is unknown (a timeout or dropped connection after sending, a 200 whose body could not
be read) may have been billed, so it is charged at its worst case (`charge_unknown`). So
`spent + reserved <= max_usd` holds at every moment and the bill can never pass the cap.

The methods are async: a budget shared with other runs or ranks (the service's monthly ledger, a
Ray actor) answers from a database or another process, and must not block the event loop while it does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from distilforge.schemas import Prices

STAGES = ("generate", "judge", "eval_teacher")


class BudgetError(ValueError):
    """A cap that cannot be enforced (no price known for the model)."""


@dataclass
class Budget:
    prices: Prices | None
    max_usd: float | None = None
    spent: float = 0.0  # settled cost, earlier runs of this folder included
    reserved: float = 0.0  # worst case of requests in flight
    spent_this_run: float = 0.0
    unknown_outcome_usd: float = 0.0  # charged at worst case: attempts that may have been billed
    by_stage: Counter[str] = field(default_factory=Counter)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        if self.max_usd is not None and self.prices is None:
            raise BudgetError("budget.max_usd needs budget.prices: this model is not in the built-in price table")

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_changed", None)  # bound to an event loop: a copy in another process gets its own
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._changed = asyncio.Event()

    async def reserve_when_possible(self, usd: float) -> bool:
        """Reserve `usd`, waiting while requests in flight still hold reservations that may settle
        below their worst case; False only once it cannot fit with nothing of this run in flight."""
        while True:
            if await self.reserve(usd):
                return True
            if self.reserved <= 1e-12 or not self.fits(usd - self.reserved):
                return False
            self._changed.clear()
            await self._changed.wait()

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        return self.prices.cost(prompt_tokens, completion_tokens, cached_tokens) if self.prices else 0.0

    def fits(self, usd: float) -> bool:
        return self.max_usd is None or self.spent + self.reserved + usd <= self.max_usd + 1e-12

    async def reserve(self, usd: float) -> bool:
        if not self.fits(usd):
            return False
        self.reserved += usd
        return True

    def _spend(self, usd: float, stage: str) -> None:
        self.spent += usd
        self.spent_this_run += usd
        self.by_stage[stage] += usd
        self._changed.set()

    async def settle(self, reserved_usd: float, actual_usd: float, stage: str) -> None:
        self.reserved = max(0.0, self.reserved - reserved_usd)
        self._spend(actual_usd, stage)

    async def charge_unknown(self, reserved_usd: float, stage: str) -> None:
        """The attempt may have been billed: its reservation becomes spend, at worst case."""
        self.reserved = max(0.0, self.reserved - reserved_usd)
        self.unknown_outcome_usd += reserved_usd
        self._spend(reserved_usd, stage)

    async def release(self, reserved_usd: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved_usd)
        self._changed.set()

    async def close(self) -> None:
        """The run is done with the budget (a shared one hands back what it did not use)."""

    def portable(self) -> Budget:
        """The budget as another process holds it for the run (a Ray actor): the same account, no waiters.
        A service's ledger budget returns itself and reconnects on the other side."""
        return Budget(self.prices, self.max_usd, spent=self.spent, reserved=self.reserved)

    def state(self) -> dict[str, Any]:
        """The account, as `absorb` takes it back from the process that held it."""
        return {"spent": self.spent, "spent_this_run": self.spent_this_run,
                "unknown_outcome_usd": self.unknown_outcome_usd, "by_stage": dict(self.by_stage)}

    def absorb(self, state: dict[str, Any]) -> None:
        """Take back the account of this run's budget as another process held it (the Ray budget actor):
        what it spent, in which stages, and what it charged at worst case."""
        self.spent, self.spent_this_run = state["spent"], state["spent_this_run"]
        self.unknown_outcome_usd = state["unknown_outcome_usd"]
        self.by_stage.clear()
        self.by_stage.update(state["by_stage"])

    def report(self) -> dict[str, object]:
        return {
            "max_usd": self.max_usd,
            "spent_usd_total": round(self.spent, 6),
            "unknown_outcome_usd": round(self.unknown_outcome_usd, 6),
            "prices": self.prices.model_dump() if self.prices else None,
        }
