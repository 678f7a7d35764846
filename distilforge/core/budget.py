"""The spend cap: reserve the worst case before a request, settle to the real cost after.

`spent + reserved <= max_usd` holds at every moment, so the bill can never pass the cap: each
reservation covers the most its request can cost (prompt upper bound + max tokens x n).
"""

from __future__ import annotations

from dataclasses import dataclass

from distilforge.core.config import Prices


class BudgetError(ValueError):
    """A cap that cannot be enforced (no price known for the model)."""


@dataclass
class Budget:
    prices: Prices | None
    max_usd: float | None = None
    multiplier: float = 1.0  # e.g. the Batch API discount
    spent: float = 0.0  # settled cost, earlier runs of this folder included
    reserved: float = 0.0  # worst case of requests in flight
    spent_this_run: float = 0.0

    def __post_init__(self) -> None:
        if self.max_usd is not None and self.prices is None:
            raise BudgetError("budget.max_usd needs budget.prices: this model is not in the built-in price table")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.prices is None:
            return 0.0
        usd = prompt_tokens * self.prices.input_per_million + completion_tokens * self.prices.output_per_million
        return usd / 1e6 * self.multiplier

    def try_reserve(self, usd: float) -> bool:
        if self.max_usd is not None and self.spent + self.reserved + usd > self.max_usd + 1e-12:
            return False
        self.reserved += usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved_usd)
        self.spent += actual_usd
        self.spent_this_run += actual_usd

    def release(self, reserved_usd: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved_usd)
