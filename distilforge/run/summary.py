"""run.json's account of the generate stage: status, stopped, money, requests per stage, steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distilforge.core.budget import Budget
from distilforge.core.config import JobConfig
from distilforge.core.steps import StepStats
from distilforge.run.executor import RankResult, rejected_by_reason
from distilforge.run.pipeline import Pipeline
from distilforge.teachers import display_model
from distilforge.teachers.sampler import StageStats

# When several reasons stopped a run, the one that says most about what happens next wins.
_STOP_ORDER = ("lease_lost", "interrupted", "cancelled", "budget")


def status_of(stop_reasons: list[str], stages: dict[str, StageStats]) -> tuple[str, str, str | None]:
    """(status, stopped, error) of the generate stage."""
    stopped = next((r for r in _STOP_ORDER if r in stop_reasons), stop_reasons[0] if stop_reasons else None)
    gen = stages.get("generate") or StageStats()
    answered = gen.samples_new + gen.samples_from_journal + gen.samples_cached + gen.succeeded
    if stopped in (None, "cancelled") and not answered and gen.samples_failed:
        # Requests were needed and none was answered: not a completed run, whatever was written.
        return "failed", stopped or "failed", gen.first_error
    if stopped is None:
        return "completed", "done", None
    status = {"budget": "stopped", "interrupted": "interrupted", "cancelled": "cancelled",
              "lease_lost": "lease_lost"}.get(stopped, "stopped")
    return status, stopped, None


def _stages_report(stages: dict[str, StageStats], budget: Budget) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """run.json's per-stage blocks, and requests and tokens summed over every stage."""
    per_stage: dict[str, Any] = {}
    total = StageStats()
    for name, stats in stages.items():
        block = stats.report()
        block["cost_usd"] = round(budget.by_stage.get(name, 0.0), 6)
        per_stage[name] = block
        total.merge(stats)
    report = total.report()
    return per_stage, report["requests"], report["tokens"]


def _cost(budget: Budget, stages: dict[str, StageStats]) -> tuple[float | None, dict[str, float]]:
    """This run's spend, and its split by stage (every stage that ran, also those that paid nothing)."""
    by_stage = {name: round(budget.by_stage.get(name, 0.0), 6) for name in [*stages, *budget.by_stage]}
    return (round(budget.spent_this_run, 6) if budget.prices is not None else None), by_stage


def _is_filter(pipeline: Pipeline, name: str) -> bool:
    steps = {s.name: s for s in [*pipeline.steps, *pipeline.global_filters]}
    step = steps.get(name)
    return step is None or getattr(step, "rejects", False)



def summarize(config: JobConfig, pipeline: Pipeline, results: list[RankResult], steps: dict[str, StepStats],
              stages: dict[str, StageStats], stop_reasons: list[str], budget: Budget, *, executor: Any,
              n_seeds: int, expected: int, orphans: int, splits: dict[str, int], n_failed: int,
              started: float) -> dict[str, Any]:
    status, stopped, error = status_of(stop_reasons, stages)
    dead = [r for r in results if r.error]
    if dead:  # a rank died (a killed Ray worker): its shard is incomplete; a rerun resumes it from its journal
        status, error = "failed", "; ".join(f"rank {r.rank}: {r.error}" for r in dead)
    per_stage, requests, tokens = _stages_report(stages, budget)
    gen = stages.get("generate") or StageStats()
    cost, by_stage = _cost(budget, stages)
    not_sent = sum(r.not_sent for r in results)
    summary: dict[str, Any] = {
        "name": config.name,
        "status": status,
        "stopped": stopped,
        "error": error,
        "mode": config.generation.mode,
        "teacher": {"backend": config.teacher.backend, "model": display_model(config.teacher),
                    "params": config.teacher.params.model_dump(mode="json", exclude_none=True)},
        "seeds": {"path": Path(config.seeds.path).name, "count": n_seeds},
        "executor": {"kind": executor.kind, "workers": getattr(executor, "workers", 1),
                     "reused_ranks": [r.rank for r in results if r.reused],
                     "ranks": [{"rank": r.rank, "seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "kept": r.kept}
                               for r in results]},
        "samples": {"expected": expected, "from_journal": gen.samples_from_journal, "new": gen.samples_new,
                    "cached": gen.samples_cached,
                    "failed": n_failed - not_sent, "not_sent": not_sent},
        "requests_saved": steps.get("generate", StepStats("generate")).counters.get("requests_saved", 0),
        "requests": requests,
        "tokens": tokens,
        "stages": per_stage,
        "cost_usd": cost,
        "cost_by_stage": by_stage,
        "budget": {**budget.report(), "orphaned_requests": orphans},
        "kept": sum(splits.values()),
        "rejected": dict(rejected_by_reason(steps)),
        "filters": [stats.report() for name, stats in steps.items() if _is_filter(pipeline, name)],
        "steps": [stats.report() for stats in steps.values()],
        "wall_seconds": per_stage.get("generate", {}).get("wall_seconds", 0.0),
        "total_seconds": round(time.monotonic() - started, 3),
        "notes": sorted({note for result in results for note in result.notes}),
    }
    for result in results:
        summary.update(result.sections)
    return summary
