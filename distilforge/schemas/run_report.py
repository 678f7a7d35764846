"""run.json as a typed report, and the one rule (`RunReport.merge`) by which every stage's part joins it:
the data stage's first pass, a targeted round, the teacher's eval, train, eval, publish and the lifecycle's
last word all write through `core/run_files.update_run`, which merges.

Cost and tokens are the run folder's, read whole from its journals by whoever writes a part, so a part's
replace the report's. Work a part adds (a new stage's requests, a round's expected samples, an unknown
outcome's charge) adds up. A first pass recounts the data stage from its journals (replays included), so it
merges into `recounted()`: the report without the data stage's counters.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# What a first pass counts afresh: it replays every answer from the journals, so its counts are the run's.
DATA_STAGE_COUNTS = ("samples", "requests", "stages", "budget")


class RunReport(BaseModel):
    """run.json. Sections other stages own (train, eval, rounds, published, a mode's own stats) ride along
    as they are; the typed ones are those stages merge into."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, description="the job's name")
    status: str | None = Field(default=None, description="completed, stopped, failed, interrupted, cancelled, "
                                                          "lease_lost")
    stopped: str | None = Field(default=None, description="why the run stopped (done when it completed)")
    error: str | None = Field(default=None, description="the error that failed the run, if any")
    mode: str | None = Field(default=None, description="generation.mode")
    teacher: dict[str, Any] = Field(default_factory=dict, description="backend, model (as displayed) and params")
    seeds: dict[str, Any] = Field(default_factory=dict, description="the seed file's name and how many seeds")
    executor: dict[str, Any] = Field(default_factory=dict, description="kind, workers, ranks and reused ranks")
    samples: dict[str, int] = Field(
        default_factory=dict, description="expected, from_journal, new, cached, failed, not_sent; a round adds "
                                          "its expected samples, the rest are the whole run's")
    requests_saved: int = Field(default=0, description="requests the generate step did not need to send")
    requests: dict[str, Any] = Field(
        default_factory=dict, description="request counters summed over every stage (errors per kind); a "
                                          "stage's part adds its own")
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per stage (generate, judge, eval_teacher, ...): requests, tokens, "
                                          "samples, wall_seconds, cost_usd; a part replaces its stages' blocks")
    cost_usd: float | None = Field(default=None, description="the run folder's teacher spend (every invocation), "
                                                             "from its journals; null when unpriced")
    tokens: dict[str, int] = Field(default_factory=dict, description="the run folder's tokens, from its journals")
    cost_by_stage: dict[str, float] = Field(default_factory=dict, description="cost_usd per stage; adds up to it")
    this_invocation: dict[str, Any] | None = Field(
        default=None, description="the current command's share: stages, started_at, cost_usd, tokens, "
                                  "cost_by_stage")
    invocations: list[dict[str, Any]] = Field(default_factory=list, description="earlier commands' shares")
    budget: dict[str, Any] = Field(
        default_factory=dict, description="max_usd, spent_usd_total, prices, orphaned_requests; "
                                          "unknown_outcome_usd adds up over parts")
    scope: str | None = Field(default=None, description="what the counts cover: the first pass, or the whole run")
    kept: int = Field(default=0, description="records in dataset/")
    rejected: dict[str, int] = Field(default_factory=dict, description="rejected records per reason")
    filters: list[dict[str, Any]] = Field(default_factory=list, description="each filter's counts")
    steps: list[dict[str, Any]] = Field(default_factory=list, description="each step's counts")
    wall_seconds: float = Field(default=0.0, description="the generate stage's time on the wire")
    total_seconds: float = Field(default=0.0, description="the command's time")
    notes: list[str] = Field(default_factory=list, description="what the ranks noted (fallbacks, reuse)")

    def merge(self, part: RunReport) -> RunReport:
        """This report with `part` joined: the only rule for cost, tokens and counts (see the module)."""
        merged = self.model_dump(exclude_unset=True)
        for key, value in part.model_dump(exclude_unset=True).items():
            old = merged.get(key)
            if key == "stages":
                value = {**(old or {}), **value}
            elif key == "requests":
                value = _added(old or {}, value)
            elif key == "samples" and "expected" in value:
                value = {**(old or {}), **value, "expected": (old or {}).get("expected", 0) + value["expected"]}
            elif key == "budget" and "unknown_outcome_usd" in value:
                spent = (old or {}).get("unknown_outcome_usd", 0.0) + value["unknown_outcome_usd"]
                value = {**(old or {}), **value, "unknown_outcome_usd": round(spent, 6)}
            merged[key] = value
        return RunReport.model_validate(merged)

    def recounted(self) -> RunReport:
        """Without the data stage's counters, for a first pass that counts them again from its journals."""
        kept = self.model_dump(exclude_unset=True)
        return RunReport.model_validate({k: v for k, v in kept.items() if k not in DATA_STAGE_COUNTS})


def _added(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Counters added key by key (nested counters too, such as errors per kind); anything else replaced."""
    out = dict(old)
    for key, value in new.items():
        mine = out.get(key)
        if isinstance(value, dict):
            out[key] = _added(mine if isinstance(mine, dict) else {}, value)
        elif isinstance(value, int) and not isinstance(value, bool) and isinstance(mine, int):
            out[key] = mine + value
        else:
            out[key] = value
    return out
