"""`distilforge estimate`: expected and worst-case cost of a job, computed without sending anything."""

from __future__ import annotations

from typing import Any

from distilforge.core.budget import Budget
from distilforge.core.prices import PRICES_CHECKED, resolve_prices
from distilforge.core.tokens import estimate_prompt_tokens, prompt_tokens_upper_bound
from distilforge.modes import make_prompter
from distilforge.pipeline.sources import SeedSource
from distilforge.schemas import ConfigError, JobConfig
from distilforge.schemas.hidden_trace import hidden_trace_model


def estimate_cost(config: JobConfig, expected_completion_tokens: int | None = None) -> dict[str, Any]:
    t, g = config.teacher, config.generation
    k = g.samples_per_seed
    completion_cap = t.completion_budget()
    expected_completion = expected_completion_tokens if expected_completion_tokens is not None else completion_cap // 2
    # Each request re-sends the prompt: once per seed with n, once per sample without. A server may
    # also ignore n and answer one choice per request, so the worst case pays the prompt per sample.
    prompts_per_seed = 1 if t.supports_n else k
    seeds = prompt_est = prompt_max = 0
    if g.mode in ("self-instruct", "evol-instruct"):
        raise ConfigError(f"generation.mode: {g.mode} grows its own prompts round by round, so its cost cannot be "
                          "estimated in advance; use budget.max_usd to cap it")
    prompter = make_prompter(g)
    prompter.prepare(config.seeds.path)
    for seed in SeedSource(config).read():
        messages, _ = prompter.build(seed)
        seeds += 1
        prompt_est += estimate_prompt_tokens(messages) * prompts_per_seed
        prompt_max += prompt_tokens_upper_bound(messages) * k
    prices = resolve_prices(config)
    multiplier = config.budget.batch_discount if t.batch_api else 1.0
    budget = Budget(prices, None)
    expected = {"prompt_tokens": prompt_est, "completion_tokens": seeds * k * expected_completion}
    worst = {"prompt_tokens": prompt_max, "completion_tokens": seeds * k * completion_cap}
    return {
        "model": t.model,
        "seeds": seeds,
        "samples": seeds * k,
        "requests": seeds * prompts_per_seed,
        "prices": prices.model_dump() if prices else None,
        "prices_source": "config" if config.budget.prices else (f"built-in table ({PRICES_CHECKED})" if prices else None),
        "batch_discount": multiplier if t.batch_api else None,
        "assumed_completion_tokens_per_sample": expected_completion,
        "expected": {**expected, "usd": budget.cost(expected["prompt_tokens"], expected["completion_tokens"]) * multiplier
                     if prices else None},
        "worst_case": {**worst, "usd": budget.cost(worst["prompt_tokens"], worst["completion_tokens"]) * multiplier
                       if prices else None},
        "max_usd": config.budget.max_usd,
        "completion_cap_per_sample": completion_cap,
        "thinking": thinking_note(config),
    }


def thinking_note(config: JobConfig) -> str | None:
    """How much of the completion budget a reasoning teacher's thinking may take (it is billed as output)."""
    t = config.teacher
    cap = t.completion_budget()
    if t.params.max_completion_tokens is None and not hidden_trace_model(t.model):
        return None
    note = (f"thinking may take up to all {cap:,} completion tokens of a sample (reasoning tokens are billed as "
            "output and count against max_completion_tokens)")
    if config.thinking.max_tokens is not None:
        note += f"; traces over thinking.max_tokens {config.thinking.max_tokens:,} are paid for, then rejected"
    if t.params.max_completion_tokens is None:
        note += "; set teacher.params.max_completion_tokens to bound it"
    return note
