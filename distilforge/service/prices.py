"""Service jobs are priced by the server, never by the job.

The server's prices are the built-in table (`core/prices.py`) plus `DISTILFORGE_PRICES`: a model name,
a teacher endpoint (every model behind it: a self-hosted vLLM can be priced 0), or `*` for anything
else. For one teacher: an endpoint entry wins (the server bills, whatever the model is called), then a
model entry, then the built-in table, then `*`. In-process teachers (local, vllm-offline) cost nothing.

Each teacher is priced as itself: the generating teacher through `budget.prices` (the eval of the
teacher too), each judge through its `filters[].prices`; the worker writes the server's prices there,
and a job that sets either gets a 422.
"""

from __future__ import annotations

from typing import Any

from distilforge.core.prices import lookup_price
from distilforge.core.urls import Url, UrlError, parse_url
from distilforge.schemas import JobConfig, Prices, TeacherConfig

OPENAI_DEFAULT = "https://api.openai.com/v1"
FREE = Prices(input_per_million=0.0, output_per_million=0.0)


def _endpoint_entries(table: dict[str, Any]) -> list[tuple[Url, Any]]:
    entries = []
    for key, price in table.items():
        if "://" not in key:
            continue
        try:
            entries.append((parse_url(key), price))
        except UrlError:
            continue
    return entries


def _for_url(url: str, model: str, table: dict[str, Prices]) -> Prices | None:
    try:
        parsed = parse_url(url)
    except UrlError:
        return None
    matches = [(entry, price) for entry, price in _endpoint_entries(table) if parsed.under(entry)]
    if matches:  # the most specific entry (longest path) wins
        return max(matches, key=lambda m: len(m[0].path))[1]
    if model in table:
        return table[model]
    return lookup_price(model) or table.get("*")


def teacher_price(teacher: TeacherConfig, table: dict[str, Prices]) -> Prices | None:
    """The server's price for one teacher, or None when it has none."""
    if teacher.backend in ("local", "vllm-offline"):
        return FREE
    prices = [_for_url(url, teacher.model, table) for url in (teacher.base_urls or [OPENAI_DEFAULT])]
    if any(p is None for p in prices):
        return None
    cached = [p.cached_input_per_million for p in prices]  # type: ignore[union-attr]
    return Prices(input_per_million=max(p.input_per_million for p in prices),  # type: ignore[union-attr]
                  output_per_million=max(p.output_per_million for p in prices),  # type: ignore[union-attr]
                  # the dearest replica's cached price; a replica without one bills cached input as input
                  cached_input_per_million=None if all(c is None for c in cached) else
                  max(c if c is not None else p.input_per_million for c, p in zip(cached, prices, strict=True)))  # type: ignore[union-attr]


def paid_teachers(config: JobConfig) -> list[tuple[str, TeacherConfig]]:
    """(dotted path, teacher) of every teacher the run's budget pays for."""
    out = [("teacher", config.teacher)]
    for i, spec in enumerate(config.filters):
        if spec.name == "judge":
            out.append((f"filters.{i}.teacher", spec.teacher))
    return out


def run_prices(config: JobConfig, table: dict[str, Prices]) -> tuple[Prices | None, list[str]]:
    """(the generating teacher's prices, dotted paths of every paid teacher without a price)."""
    unpriced = [where for where, teacher in paid_teachers(config) if teacher_price(teacher, table) is None]
    return teacher_price(config.teacher, table), unpriced


def batch_discount(teacher: TeacherConfig, discounts: dict[str, float]) -> float:
    """The server's Batch API multiplier for a teacher: the same keys as prices (the most specific endpoint,
    then the model, then `*`); 1.0 (no discount) where none matches. With replicas, the largest wins."""
    found = []
    for url in teacher.base_urls or [OPENAI_DEFAULT]:
        try:
            parsed = parse_url(url)
        except UrlError:
            found.append(1.0)
            continue
        matches = [(entry, d) for entry, d in _endpoint_entries(discounts) if parsed.under(entry)]  # type: ignore[arg-type]
        if matches:
            found.append(max(matches, key=lambda m: len(m[0].path))[1])
        else:
            found.append(discounts.get(teacher.model, discounts.get("*", 1.0)))
    return max(found)


def apply_server_prices(config: JobConfig, table: dict[str, Prices],
                        discounts: dict[str, float] | None = None) -> Prices | None:
    """Write the server's prices into the config (`budget.prices`, each judge's `prices`, the Batch API's
    `budget.batch_discount`); returns the generating teacher's. A teacher without a server price keeps
    None (it runs unpriced; no cap applies)."""
    prices = teacher_price(config.teacher, table)
    config.budget.prices = prices
    config.budget.batch_discount = batch_discount(config.teacher, discounts or {})
    for spec in config.filters:
        if spec.name == "judge":
            spec.prices = teacher_price(spec.teacher, table)
    return prices
