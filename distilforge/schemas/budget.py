"""`budget:`: prices and the run folder's spending cap."""

from __future__ import annotations

from pydantic import Field

from distilforge.schemas.base import Strict


class Prices(Strict):
    input_per_million: float = Field(ge=0, description="USD per million prompt tokens")
    output_per_million: float = Field(
        ge=0, description="USD per million completion tokens (reasoning tokens included)")
    cached_input_per_million: float | None = Field(
        default=None, ge=0, description="prompt tokens served from the provider's cache; default: the input price")

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD. Cached tokens are part of prompt_tokens; reasoning tokens are part of completion_tokens."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million
        return ((prompt_tokens - cached) * self.input_per_million + cached * cached_price
                + completion_tokens * self.output_per_million) / 1e6


class BudgetConfig(Strict):
    prices: Prices | None = Field(default=None, description="default: the built-in table for known models")
    max_usd: float | None = Field(default=None, gt=0, description="hard cap on teacher spend for the run folder")
    batch_discount: float = Field(default=0.5, gt=0, le=1, description="price multiplier for Batch API requests")
