"""The engine's contract on in-memory pipelines: the Executor base, `open_rank`, the `Missing` record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import api_config, write_jsonl

from distilforge.core.budget import Budget
from distilforge.core.seeds import SeedSelection
from distilforge.pipeline.build import Pipeline
from distilforge.pipeline.executor import Executor, LocalExecutor
from distilforge.pipeline.rank import open_rank, staging_dir
from distilforge.pipeline.sources import SeedSource
from distilforge.pipeline.steps import PipelineStep, Progress, RunControl, aiter_of, current_context
from distilforge.schemas import JobConfig
from distilforge.schemas.records import Missing, Record, Seed
from distilforge.teachers.sampler import Outcome


def _config(tmp_path: Path, n: int = 6) -> JobConfig:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": str(i), "question": f"q{i}?", "answer": str(i)}
                                                   for i in range(n)])
    return JobConfig.model_validate(api_config(seeds, "http://127.0.0.1:9",
                                               seeds__fields={"question": "question", "answer": "answer", "id": "id"}))


class Answer(PipelineStep):
    """A teacher-free step: each seed becomes one record; seed 1 fails, seed 2 is left unsent by a stop."""

    name = "answer"

    async def run(self, seeds: AsyncIterator[Seed], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        ctx = current_context()
        async for seed in seeds:
            self.stat_update("in")
            outcome = Outcome(failed=[(0, "HTTP 500: boom", False)] if seed.seed_id == "1" else [],
                              not_sent=[0] if seed.seed_id == "2" else [])
            for missing in outcome.missing(seed.seed_id, ctx.stopped):
                ctx.fail(missing)
            if outcome.failed or outcome.not_sent:
                continue
            self.stat_update("out")
            yield Record(seed_id=seed.seed_id, sample_index=0, question=seed.question, gold=seed.gold,
                         answer_type=seed.answer_type, prompt=[], teacher_model="none", text=seed.gold or "")


def _run(executor: Executor, pipeline: Pipeline, run_dir: Path) -> Any:
    budget = Budget(None, None)
    return asyncio.run(executor.run(pipeline, run_dir, budget, RunControl(), Progress(total=6)))


def test_missing_renders_the_text_users_read():
    assert Missing.not_sent("s", 3, "cancelled").error == "not sent (stopped: cancelled)"
    assert Missing.not_sent("s", 3, None).error == "not sent (stopped: budget)"  # a sampler's own budget stop
    failed = Missing("s", 1, "failed", "HTTP 500: boom")
    assert failed.error == "HTTP 500: boom"
    assert failed.row() == {"seed_id": "s", "sample_index": 1, "error": "HTTP 500: boom"}
    outcome = Outcome(failed=[(1, "HTTP 500: boom", True)], not_sent=[2])
    assert [m.reason for m in outcome.missing("s", "interrupted")] == ["failed", "not_sent"]


def test_local_executor_keeps_the_contract(tmp_path):
    config = _config(tmp_path)
    executor = LocalExecutor()
    assert isinstance(executor, Executor) and executor.kind == "local" and executor.world_size == 1
    results = _run(executor, Pipeline(config, [Answer()], [], SeedSource(config)), tmp_path / "run")
    assert results is executor.results and len(results) == 1
    result = results[0]
    assert (result.kept, result.failed, result.not_sent, result.stop_reasons) == (4, 1, 1, [])
    assert result.steps["answer"].n_in == 6 and result.steps["answer"].n_out == 4
    staging = staging_dir(tmp_path / "run", 0)
    failed = [json.loads(line) for line in (staging / "failed.jsonl").read_text().splitlines()]
    assert failed == [{"seed_id": "1", "sample_index": 0, "error": "HTTP 500: boom"},
                      {"seed_id": "2", "sample_index": 0, "error": "not sent (stopped: budget)"}]
    assert len((staging / "kept.jsonl").read_text().splitlines()) == 4
    assert json.loads((staging / "result.json").read_text())["kept"] == 4


def test_a_stop_before_the_rank_opens_reaches_it(tmp_path):
    config = _config(tmp_path)
    executor = LocalExecutor()
    executor.stop("cancelled")
    executor.stop("cancelled")  # the driver repeats stops: kept once
    assert executor.stop_reasons == ["cancelled"]
    result = _run(executor, Pipeline(config, [Answer()], [], SeedSource(config)), tmp_path / "run")[0]
    assert result.stop_reasons == ["cancelled"]
    failed = (staging_dir(tmp_path / "run", 0) / "failed.jsonl").read_text()
    assert "not sent (stopped: cancelled)" in failed


def test_open_rank_opens_and_closes_a_rank(tmp_path):
    config = _config(tmp_path)
    closed: list[str] = []

    async def body() -> Any:
        async with open_rank(config, tmp_path, Budget(None, None), RunControl(), rank=2, world_size=3,
                             staging=tmp_path / "st", stops=["interrupted"]) as ctx:
            assert current_context() is ctx and (ctx.rank, ctx.world_size) == (2, 3)
            assert ctx.journal is not None and ctx.stopped == "interrupted"

            async def opener() -> tuple[str, Any]:
                async def close() -> None:
                    closed.append("resource")
                return "r", close

            await ctx.resource("thing", opener)
            record = Record(seed_id="a", sample_index=0, question="q", gold=None, answer_type="text", prompt=[],
                            teacher_model="t")
            ctx.keep(record)
            ctx.reject(record)
            ctx.fail(Missing.not_sent("a", 1, ctx.stopped))
        return ctx

    ctx = asyncio.run(body())
    assert closed == ["resource"] and dict(ctx.counts) == {"kept": 1, "not_sent": 1}
    assert [len((tmp_path / "st" / f"{n}.jsonl").read_text().splitlines()) for n in ("kept", "rejected", "failed")] \
        == [1, 1, 1]
    assert (tmp_path / "journal" / "rank-00002.sqlite").exists()
    with pytest.raises(LookupError):
        current_context()


def test_open_rank_without_journal_or_files(tmp_path):
    config = _config(tmp_path)

    async def body() -> None:
        async with open_rank(config, tmp_path / "run", Budget(None, None), RunControl(), journal=False) as ctx:
            assert ctx.journal is None
            ctx.fail(Missing("a", 0, "failed", "x"))  # dropped, counted
            assert ctx.counts["failed"] == 1

    asyncio.run(body())
    assert not (tmp_path / "run").exists()


def test_seed_source_shards_by_seed_id_and_applies_the_selection(tmp_path):
    config = _config(tmp_path, n=40)
    everyone = [s.seed_id for s in SeedSource(config).read()]
    assert everyone == [str(i) for i in range(40)]  # file order
    shards = [[s.seed_id for s in SeedSource(config).read(rank, 3)] for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == sorted(everyone) and all(shards)  # each seed on exactly one rank
    assert [[s.seed_id for s in SeedSource(config).read(rank, 3)] for rank in range(3)] == shards  # stable
    only = SeedSource(config, SeedSelection(only=frozenset({"3", "7", "30"})))
    assert sorted(s.seed_id for r in range(3) for s in only.read(r, 3)) == ["3", "30", "7"]

    async def stream(rank: int) -> list[str]:  # as a step: the rank's share, read on a worker thread
        return [s.seed_id async for s in SeedSource(config).run(aiter_of(()), rank, 3)]

    assert [asyncio.run(stream(r)) for r in range(3)] == shards


def test_seed_source_takes_the_seed_settings(tmp_path):
    config = _config(tmp_path, n=10)
    config = config.model_copy(update={"seeds": config.seeds.model_copy(update={"limit": 4})})
    assert [s.seed_id for s in SeedSource(config).read()] == ["0", "1", "2", "3"]
    assert {s.answer_type for s in SeedSource(config, answer_type="text").read()} == {"text"}


def test_preflight_reads_the_seed_file_once_with_a_probe_split(tmp_path, monkeypatch):
    """`loop:` holds a probe split apart: preflight counts the first pass and collects the probe in one read."""
    import distilforge.pipeline.sources as sources
    from distilforge.core.seeds import in_probe
    from distilforge.pipeline.preflight import _count_seeds

    config = _config(tmp_path, n=40)
    config = config.model_copy(update={"loop": config.loop.model_copy(update={"rounds": 1, "probe_fraction": 0.25})})
    reads: list[str] = []
    real = sources.read_seeds

    def counting(path: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sources, "read_seeds", counting)
    facts = _count_seeds(config, None)
    assert reads == [config.seeds.path]
    probe = [str(i) for i in range(40) if in_probe(str(i), 0.25, config.generation.rng_seed)]
    assert [row["id"] for row in facts.probe or []] == probe and facts.n_seeds == 40 - len(probe)
    assert facts.probe and set(facts.probe[0]) == {"id", "question", "answer", "gold"}


def test_budget_travels_and_comes_back_whole():
    """The Ray driver hands its budget to the actor (`portable`) and takes its account back (`absorb`)."""
    here = Budget(None, None, spent=1.0)
    there = here.portable()
    assert there is not here and (there.spent, there.max_usd) == (1.0, None)

    async def spend() -> None:
        assert await there.reserve(0.5)
        await there.settle(0.5, 0.25, "generate")
        assert await there.reserve(0.5)
        await there.charge_unknown(0.5, "judge")

    asyncio.run(spend())
    here.absorb(there.state())
    assert (here.spent, here.spent_this_run, here.unknown_outcome_usd) == (1.75, 0.75, 0.5)
    assert dict(here.by_stage) == {"generate": 0.25, "judge": 0.5}


def test_the_teacher_backend_says_what_a_rank_holds(tmp_path):
    from distilforge.teachers import rank_resources

    config = _config(tmp_path)
    assert rank_resources(config.teacher) == {"num_cpus": 1}
    engine = config.teacher.model_copy(update={"backend": "vllm-offline", "engine_args": {"tensor_parallel_size": 2}})
    assert rank_resources(engine) == {"num_cpus": 1, "num_gpus": 2}
