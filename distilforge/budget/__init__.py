"""Money: prices per model, token estimates made offline, and a spend cap that is never passed."""

from distilforge.budget.ledger import Budget, BudgetError
from distilforge.budget.prices import PRICES_CHECKED, lookup_price, resolve_prices
from distilforge.budget.tokens import estimate_prompt_tokens, prompt_tokens_upper_bound

__all__ = [
    "PRICES_CHECKED",
    "Budget",
    "BudgetError",
    "estimate_prompt_tokens",
    "lookup_price",
    "prompt_tokens_upper_bound",
    "resolve_prices",
]
