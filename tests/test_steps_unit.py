"""Steps on an in-memory rank context: a list of records in, kept and rejected out, no journal, no server.

A filter writes only its predicate and reason and a group step only its decision; the base counts what
came in, what went out and why the rest was rejected, and hands each reject to the rank's sink.
"""

from __future__ import annotations

import asyncio
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from distilforge.core.budget import Budget
from distilforge.pipeline.steps import (
    EXAMPLES_KEPT,
    Filter,
    GroupFilter,
    Map,
    PipelineStep,
    Progress,
    RankContext,
    RunControl,
    aiter_of,
    chain,
    use_context,
)
from distilforge.quality.builtin import ExactDuplicate, default_filters
from distilforge.quality.policy import SeedPolicy
from distilforge.quality.simple import LengthFilter
from distilforge.schemas import GenerationConfig, LengthFilterSpec
from distilforge.schemas.records import Record


def rec(seed: str, index: int, text: str, answer: str | None = "18", gold: str | None = "18", **kw: Any) -> Record:
    meta = {"answer_raw": answer} if answer is not None else {}
    return Record(seed_id=seed, sample_index=index, question=f"{seed}: how many eggs?", gold=gold,
                  answer_type="number", prompt=[{"role": "user", "content": seed}], teacher_model="m", text=text,
                  rationale=text, answer=answer, meta=meta, **kw)


def rank_context(rank: int = 0, world_size: int = 1, rejected: list[Record] | None = None) -> RankContext:
    """What an executor sets up for a rank, in memory: no config, journal, prices or files; rejects go to a list."""
    sink = rejected if rejected is not None else []
    return RankContext(config=None, run_dir=Path("unused"), rank=rank, world_size=world_size,  # type: ignore[arg-type]
                       journal=None, budget=Budget(None), control=RunControl(), progress=Progress(),
                       reject=sink.append, fail=lambda *missing: None)


def run(steps: list[PipelineStep], records: list[Record], rank: int = 0, world_size: int = 1
        ) -> tuple[list[Record], list[Record], RankContext]:
    """(kept, rejected, context) of `steps` over `records`, as one rank runs them."""
    rejected: list[Record] = []
    ctx = rank_context(rank, world_size, rejected)

    async def drain() -> list[Record]:
        with use_context(ctx):
            return [r async for r in chain(aiter_of(records), steps, ctx.rank, ctx.world_size)]

    kept = asyncio.run(drain())
    asyncio.run(ctx.aclose())
    return kept, rejected, ctx


class ShortText(Filter):
    name = "short"

    def check(self, record: Record) -> str | None:
        return f"{len(record.text)} characters" if len(record.text) < 10 else None


def test_a_filter_writes_only_its_check_and_the_base_counts_tags_and_sinks_rejects():
    records = [rec("s1", 0, "Tim buys 18 eggs."), rec("s1", 1, "18"), rec("s2", 0, "no"), rec("s2", 1, "Eighteen eggs.")]
    kept, rejected, ctx = run([ShortText()], records)
    assert [(r.seed_id, r.sample_index) for r in kept] == [("s1", 0), ("s2", 1)]  # order kept
    assert [(r.reject_reason, r.reject_detail) for r in rejected] == [("short", "2 characters"), ("short", "2 characters")]
    stats = ctx.stats["short"]
    assert (stats.n_in, stats.n_out, dict(stats.rejected)) == (4, 2, {"short": 2})
    assert stats.examples[0] == {"seed_id": "s1", "reason": "short", "detail": "2 characters", "text": "18"}
    assert all(r.reject_reason is None for r in kept)
    report = stats.report()
    assert (report["name"], report["in"], report["out"]) == ("short", 4, 2) and report["seconds"] >= 0


def test_examples_are_capped_and_the_counts_are_not():
    records = [rec(f"s{i}", 0, "x") for i in range(EXAMPLES_KEPT + 4)]
    kept, rejected, ctx = run([ShortText()], records)
    stats = ctx.stats["short"]
    assert kept == [] and len(rejected) == stats.rejected["short"] == EXAMPLES_KEPT + 4
    assert len(stats.examples) == EXAMPLES_KEPT


def test_the_built_in_checks_reject_each_fault_once_by_the_first_check_that_sees_it():
    good = "Three dozen is 3 * 12 = 18 eggs.\nThe answer is 18."
    records = [
        rec("a", 0, good),
        rec("a", 1, "", reasoning="Let me count the dozens", answer=None),  # thinking, no answer after it
        rec("b", 0, "Three dozen is", finish_reason="length", completion_tokens=64),
        rec("b", 1, "   ", answer=None),  # empty (Unparseable would also reject it: the earlier check wins)
        rec("c", 0, "I'm sorry, I can't help with that.", answer=None),
        rec("c", 1, "Eggs are nice.", answer=None),
        rec("d", 0, "Three dozen is 36.\nThe answer is 36.", answer="36"),
        rec("d", 1, good),
        rec("d", 2, "  three dozen is 3 * 12 = 18 EGGS.\nThe answer is 18. "),  # the same rationale, folded
    ]
    steps: list[PipelineStep] = [*default_filters(), ExactDuplicate()]
    kept, rejected, ctx = run(steps, records)
    assert [(r.seed_id, r.sample_index) for r in kept] == [("a", 0), ("d", 1)]
    assert Counter(r.reject_reason for r in rejected) == {
        "unfinished_thinking": 1, "truncated": 1, "empty": 1, "refusal": 1, "unparseable": 1, "wrong_answer": 1,
        "duplicate": 1}
    details = {r.reject_reason: r.reject_detail for r in rejected}
    assert details["truncated"] == "hit max_tokens after 64 tokens"
    assert details["wrong_answer"] == "answered 36, gold 18"
    assert details["duplicate"] == "same rationale as an earlier sample of seed d"
    # Each step sees what the one before kept: in(n+1) == out(n), and in == out + rejected for every step.
    flow = [(ctx.stats[s.name].n_in, ctx.stats[s.name].n_out, sum(ctx.stats[s.name].rejected.values())) for s in steps]
    assert flow[0][0] == len(records) and flow[-1][1] == len(kept)
    assert all(n_in == n_out + n_rejected for n_in, n_out, n_rejected in flow)
    assert all(flow[i][1] == flow[i + 1][0] for i in range(len(flow) - 1))


def test_a_filter_from_the_config_counts_on_the_same_base():
    steps = [LengthFilter(LengthFilterSpec(name="length", min_words=3, max_words=6))]
    records = [rec("a", 0, "Eighteen."), rec("a", 1, "Three dozen is eighteen."), rec("b", 0, " ".join(["egg"] * 9))]
    kept, rejected, ctx = run(steps, records)
    assert [r.sample_index for r in kept] == [1]
    assert [r.reject_detail for r in rejected] == ["1 words, below 3", "9 words, above 6"]
    assert dict(ctx.stats["length"].rejected) == {"length": 2}


class FirstOfEachSeed(GroupFilter):
    """Keeps each seed's first record; records which groups it was shown."""

    name = "first"

    def __init__(self) -> None:
        self.groups: list[list[tuple[str, int]]] = []

    def decide(self, group: list[Record]) -> list[tuple[Record, tuple[str, str] | None]]:
        self.groups.append([(r.seed_id, r.sample_index) for r in group])
        return [(r, None if i == 0 else ("not_first", f"sample {i} of {len(group)}")) for i, r in enumerate(group)]


def test_a_group_filter_sees_each_seed_whole_and_the_base_counts_its_decisions():
    step = FirstOfEachSeed()
    records = [rec("a", 0, "x"), rec("a", 1, "y"), rec("b", 0, "z"), rec("c", 0, "u"), rec("c", 1, "v"), rec("c", 2, "w")]
    kept, rejected, ctx = run([step], records)
    assert step.groups == [[("a", 0), ("a", 1)], [("b", 0)], [("c", 0), ("c", 1), ("c", 2)]]  # the last one too
    assert [(r.seed_id, r.sample_index) for r in kept] == [("a", 0), ("b", 0), ("c", 0)]
    assert [r.reject_detail for r in rejected] == ["sample 1 of 2", "sample 1 of 3", "sample 2 of 3"]
    stats = ctx.stats["first"]
    assert (stats.n_in, stats.n_out, dict(stats.rejected)) == (6, 3, {"not_first": 3})


def test_the_keep_policy_and_self_consistency_are_group_decisions_counted_by_reason():
    one = SeedPolicy(GenerationConfig(samples_per_seed=3, keep="one"))
    kept, rejected, ctx = run([one], [rec("a", i, f"take {i}") for i in range(3)] + [rec("b", 0, "only")])
    assert [(r.seed_id, r.sample_index) for r in kept] == [("a", 0), ("b", 0)]
    assert {r.reject_detail for r in rejected} == {"seed already has 1 kept (keep: one)"}
    assert dict(ctx.stats["keep_policy"].rejected) == {"keep_policy": 2}

    vote = SeedPolicy(GenerationConfig(samples_per_seed=3, self_consistency=True))
    no_gold = [rec("q", 0, "a", answer="5", gold=None), rec("q", 1, "b", answer="5", gold=None),
               rec("q", 2, "c", answer="7", gold=None)]
    kept, rejected, ctx = run([vote], no_gold)
    assert [r.answer for r in kept] == ["5", "5"] and [r.vote_share for r in kept] == [0.6667, 0.6667]
    assert [(r.reject_reason, r.answer) for r in rejected] == [("minority", "7")]
    assert (ctx.stats["keep_policy"].n_in, ctx.stats["keep_policy"].n_out) == (3, 2)


def test_a_map_counts_every_record_through():
    upper = Map("upper", lambda r: (setattr(r, "text", r.text.upper()), r)[1])
    kept, rejected, ctx = run([upper, ShortText()], [rec("a", 0, "eighteen eggs"), rec("b", 0, "few")])
    assert [r.text for r in kept] == ["EIGHTEEN EGGS"] and [r.text for r in rejected] == ["FEW"]
    assert (ctx.stats["upper"].n_in, ctx.stats["upper"].n_out) == (2, 2)


def test_a_step_holds_no_counts_each_rank_keeps_its_own_and_they_merge_by_addition():
    step = ShortText()
    shipped = pickle.loads(pickle.dumps(step))  # configuration only: it ships to another process as is
    _, _, first = run([step], [rec("a", 0, "x"), rec("b", 0, "long enough text")], rank=0, world_size=2)
    _, _, second = run([shipped], [rec("c", 0, "y"), rec("d", 0, "z")], rank=1, world_size=2)
    a, b = first.stats["short"], second.stats["short"]
    assert (a.n_in, a.n_out, b.n_in, b.n_out) == (2, 1, 2, 0)
    a.merge(b)
    assert (a.n_in, a.n_out, dict(a.rejected)) == (4, 1, {"short": 3}) and len(a.examples) == EXAMPLES_KEPT
    with pytest.raises(LookupError):  # outside a rank there are no stats to write to
        _ = step.stats


def test_the_rank_context_opens_a_resource_once_closes_them_in_reverse_and_fans_out_stops():
    ctx = rank_context()
    events: list[str] = []

    def opener(name: str):
        async def open_() -> tuple[str, Any]:
            events.append(f"open {name}")

            async def close() -> None:
                events.append(f"close {name}")

            return name.upper(), close

        return open_

    async def use() -> list[str]:
        return [await ctx.resource("teacher", opener("teacher")), await ctx.resource("index", opener("index")),
                await ctx.resource("teacher", opener("teacher"))]

    assert asyncio.run(use()) == ["TEACHER", "INDEX", "TEACHER"]
    asyncio.run(ctx.aclose())
    assert events == ["open teacher", "open index", "close index", "close teacher"]

    stops: list[str] = []
    ctx.on_stop(stops.append)
    assert ctx.stopped is None
    ctx.stop("budget")
    ctx.stop("interrupted")
    ctx.stop("budget")
    assert ctx.stopped == "budget" and ctx.stop_reasons == ["budget", "interrupted"]  # the first reason names it
    assert set(stops) == {"budget", "interrupted"}  # every registered stopper heard each reason
