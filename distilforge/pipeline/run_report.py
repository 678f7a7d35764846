"""run.json's account of the generate stage: status, stopped, money, requests per stage, steps.

Money is per run folder: `cost_usd` and `tokens` are the whole folder's, read from its journal
(every invocation: resumes, re-runs, rounds, the teacher's eval), and `cost_by_stage` adds up to
`cost_usd`. The current invocation's share is `this_invocation`; every earlier one is in `invocations`.
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distilforge.core.budget import Budget
from distilforge.core.journal import journal_tokens, journal_totals
from distilforge.core.run_files import read_run
from distilforge.pipeline.build import Pipeline
from distilforge.pipeline.executor import Executor, RankResult, rejected_by_reason
from distilforge.pipeline.steps import StepStats
from distilforge.schemas import JobConfig
from distilforge.teachers import display_model
from distilforge.teachers.sampler import SpendStats


@dataclass
class Invocation:
    """One command on a run folder: what the folder held when it began, and what it spent per stage."""

    run_dir: Path
    stages: list[str]
    priced: bool
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    usd_at_start: float = 0.0
    tokens_at_start: dict[str, int] = field(default_factory=dict)
    earlier_by_stage: dict[str, float] = field(default_factory=dict)
    earlier: list[dict[str, Any]] = field(default_factory=list)
    by_stage: Counter[str] = field(default_factory=Counter)

    def add(self, budget: Budget, ran: list[str] | None = None) -> None:
        """A stage's budget is closed: its spend per stage is this invocation's (stages that ran and
        paid nothing are listed at 0)."""
        for stage in ran or []:
            self.by_stage[stage] += 0.0
        for stage, usd in budget.by_stage.items():
            self.by_stage[stage] += usd


_INVOCATION: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("invocation", default=None)


def start_invocation(run_dir: Path, stages: tuple[str, ...], priced: bool) -> Invocation:
    """Called by the lifecycle under the folder's lock, before any request of this invocation."""
    run = read_run(run_dir)
    usd, _ = journal_totals(run_dir)
    invocation = Invocation(run_dir, list(stages), priced, usd_at_start=usd, tokens_at_start=journal_tokens(run_dir),
                            earlier_by_stage=dict(run.get("cost_by_stage") or {}),
                            earlier=[*(run.get("invocations") or []), *([run["this_invocation"]]
                                                                     if run.get("this_invocation") else [])])
    _INVOCATION.set(invocation)
    return invocation


def current_invocation(run_dir: Path, priced: bool = True) -> Invocation:
    """The invocation under way (one is started for a caller outside the lifecycle)."""
    invocation = _INVOCATION.get()
    if invocation is None or invocation.run_dir != run_dir:
        invocation = start_invocation(run_dir, (), priced)
    return invocation


def money(run_dir: Path) -> dict[str, Any]:
    """run.json's money sections: the whole folder's totals, and this invocation's share."""
    inv = current_invocation(run_dir)
    usd, _ = journal_totals(run_dir)
    tokens = journal_tokens(run_dir)
    by_stage = Counter({k: float(v) for k, v in inv.earlier_by_stage.items() if k != "earlier_unrecorded"})
    by_stage.update(inv.by_stage)
    # Spend the journal holds but no run.json recorded (a run killed before it wrote one).
    gap = usd - sum(by_stage.values())
    if gap > 1e-6:
        by_stage["earlier_unrecorded"] = gap
    mine_usd = usd - inv.usd_at_start
    return {
        "cost_usd": round(usd, 6) if inv.priced else None,
        "tokens": tokens,
        "cost_by_stage": {k: round(v, 6) for k, v in by_stage.items()},
        "this_invocation": {"stages": inv.stages, "started_at": inv.started_at,
                            "cost_usd": round(mine_usd, 6) if inv.priced else None,
                            "tokens": {k: v - inv.tokens_at_start.get(k, 0) for k, v in tokens.items()},
                            "cost_by_stage": {k: round(v, 6) for k, v in inv.by_stage.items()}},
        "invocations": inv.earlier,
    }


# When several reasons stopped a run, the one that says most about what happens next wins.
_STOP_ORDER = ("lease_lost", "interrupted", "cancelled", "key_refused", "budget")


def status_of(stop_reasons: list[str], spend: dict[str, SpendStats]) -> tuple[str, str, str | None]:
    """(status, stopped, error) of the generate stage, from its stop reasons and its sampler's spend."""
    stopped = next((r for r in _STOP_ORDER if r in stop_reasons), stop_reasons[0] if stop_reasons else None)
    gen = spend.get("generate") or SpendStats()
    answered = gen.samples_new + gen.samples_from_journal + gen.samples_cached + gen.succeeded
    if stopped in (None, "cancelled") and not answered and gen.samples_failed:
        # Requests were needed and none was answered: not a completed run, whatever was written.
        return "failed", stopped or "failed", gen.first_error
    if stopped == "key_refused":  # the server refused the key from the first request on
        return "failed", stopped, gen.first_error
    if stopped is None:
        return "completed", "done", None
    status = {"budget": "stopped", "interrupted": "interrupted", "cancelled": "cancelled",
              "lease_lost": "lease_lost"}.get(stopped, "stopped")
    return status, stopped, None


def _spend_report(spend: dict[str, SpendStats], budget: Budget) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """run.json's per-stage blocks (`stages`), and requests and tokens summed over every stage."""
    per_stage: dict[str, Any] = {}
    total = SpendStats()
    for name, stats in spend.items():
        block = stats.report()
        block["cost_usd"] = round(budget.by_stage.get(name, 0.0), 6)
        per_stage[name] = block
        total.merge(stats)
    report = total.report()
    return per_stage, report["requests"], report["tokens"]


def _is_filter(pipeline: Pipeline, name: str) -> bool:
    steps = {s.name: s for s in [*pipeline.steps, *pipeline.global_filters]}
    step = steps.get(name)
    return step is None or getattr(step, "rejects", False)



def build_run_report(config: JobConfig, pipeline: Pipeline, results: list[RankResult], steps: dict[str, StepStats],
                     spend: dict[str, SpendStats], stop_reasons: list[str], budget: Budget, *, executor: Executor,
                     n_seeds: int, expected: int, orphans: int, splits: dict[str, int], n_failed: int,
                     started: float, run_dir: Path) -> dict[str, Any]:
    """run.json's fields for the data stage; `spend`: each sampler stage's requests, tokens and money."""
    status, stopped, error = status_of(stop_reasons, spend)
    dead = [r for r in results if r.error]
    if dead:  # a rank died (a killed Ray worker): its shard is incomplete; a rerun resumes it from its journal
        status, error = "failed", "; ".join(f"rank {r.rank}: {r.error}" for r in dead)
    per_stage, requests, _ = _spend_report(spend, budget)
    gen = spend.get("generate") or SpendStats()
    invocation = current_invocation(run_dir, budget.prices is not None)
    invocation.add(budget, ["generate", *spend])  # the data stage ran, even when it had nothing left to pay for
    not_sent = sum(r.not_sent for r in results)
    report: dict[str, Any] = {
        "name": config.name,
        "status": status,
        "stopped": stopped,
        "error": error,
        "mode": config.generation.mode,
        "teacher": {"backend": config.teacher.backend, "model": display_model(config.teacher),
                    "params": config.teacher.params.model_dump(mode="json", exclude_none=True)},
        "seeds": {"path": Path(config.seeds.path).name, "count": n_seeds},
        "executor": {"kind": executor.kind, "workers": executor.world_size,
                     "reused_ranks": [r.rank for r in results if r.reused],
                     "ranks": [{"rank": r.rank, "seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "kept": r.kept}
                               for r in results]},
        "samples": {"expected": expected, "from_journal": gen.samples_from_journal, "new": gen.samples_new,
                    "cached": gen.samples_cached,
                    "failed": n_failed - not_sent, "not_sent": not_sent},
        "requests_saved": steps.get("generate", StepStats("generate")).counters.get("requests_saved", 0),
        "requests": requests,
        "stages": per_stage,
        **money(run_dir),
        "budget": {**budget.report(), "orphaned_requests": orphans},
        "scope": "first pass",  # targeted rounds widen every count to the whole run, and say so
        "kept": sum(splits.values()),
        "rejected": dict(rejected_by_reason(steps)),
        "filters": [stats.report() for name, stats in steps.items() if _is_filter(pipeline, name)],
        "steps": [stats.report() for stats in steps.values()],
        "wall_seconds": per_stage.get("generate", {}).get("wall_seconds", 0.0),
        "total_seconds": round(time.monotonic() - started, 3),
        "notes": sorted({note for result in results for note in result.notes}),
    }
    for result in results:
        report.update(result.sections)
    return report
