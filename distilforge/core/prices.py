"""Built-in list prices (USD per million tokens) for well-known API models.

Dated: prices change, so a config's `budget.prices` always wins, and a model missing here has no
price (free for self-hosted servers; an error when `budget.max_usd` is set, so a cap is never
enforced against a guessed price).
"""

from __future__ import annotations

from distilforge.schemas import JobConfig, JudgeFilterSpec, Prices, TeacherConfig

PRICES_CHECKED = "2025-08-15"  # OpenAI's published list prices on that day (standard tier)

# model prefix -> (input, output, cached input); the longest matching prefix wins ("gpt-4o-mini" before "gpt-4o").
_TABLE: dict[str, tuple[float, float, float | None]] = {
    "gpt-5-nano": (0.05, 0.40, 0.005),
    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "o4-mini": (1.10, 4.40, 0.275),
    "o3-mini": (1.10, 4.40, 0.55),
    "o3": (2.00, 8.00, 0.50),
    "o1": (15.00, 60.00, 7.50),
    "gpt-3.5-turbo": (0.50, 1.50, None),
}


def lookup_price(model: str) -> Prices | None:
    name = model.rsplit("/", 1)[-1].lower()
    best = max((p for p in _TABLE if name.startswith(p)), key=len, default=None)
    if best is None:
        return None
    inp, out, cached = _TABLE[best]
    return Prices(input_per_million=inp, output_per_million=out, cached_input_per_million=cached)


def teacher_prices(teacher: TeacherConfig, given: Prices | None = None) -> Prices | None:
    """A teacher's prices: the ones given for it, else free for in-process models, else the table's."""
    if given is not None:
        return given
    if teacher.backend in ("local", "vllm-offline"):
        return Prices(input_per_million=0.0, output_per_million=0.0)
    return lookup_price(teacher.model)


def resolve_prices(config: JobConfig) -> Prices | None:
    """The generating teacher's prices: `budget.prices`, else the built-in table (in-process models are free)."""
    return teacher_prices(config.teacher, config.budget.prices)


def judge_prices(config: JobConfig, spec: JudgeFilterSpec) -> Prices | None:
    """A judge is priced as its own model: `filters[].prices`, else the table; `budget.prices` only when the
    judge is the generating model itself."""
    same = spec.teacher.model == config.teacher.model and spec.teacher.backend == config.teacher.backend
    return teacher_prices(spec.teacher, spec.prices or (config.budget.prices if same else None))
