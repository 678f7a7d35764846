"""The journal's read API: what a run folder's shards hold, read without writing, old shards included."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

import pytest

from distilforge.core.journal import (
    Answer,
    BatchJob,
    DeadLetter,
    Journal,
    JournalReader,
    journal_tokens,
    journal_totals,
    shard_path,
)
from distilforge.schemas.records import Completion, TeacherResponse


def _answer(text: str = "The answer is 1.", n: int = 1) -> TeacherResponse:
    return TeacherResponse([Completion(text, "stop") for _ in range(n)], prompt_tokens=10, completion_tokens=7,
                           model="m", reasoning_tokens=3, cached_tokens=4)


def test_a_folder_without_a_journal_reads_empty_and_stays_untouched(tmp_path):
    reader = JournalReader(tmp_path / "run")
    assert reader.paths == [] and list(reader.answers()) == [] and reader.epochs() == []
    totals = reader.totals()
    assert (totals.answers, totals.spent_usd, totals.orphans) == (0, 0.0, 0)
    assert not (tmp_path / "run").exists()


def test_every_table_reads_back_over_every_shard(tmp_path):
    first, second = Journal(shard_path(tmp_path, 0), fence=3), Journal(shard_path(tmp_path, 1))
    try:
        first.commit("s1", [("k1", 0), ("k2", 1)], _answer(n=2), cost_usd=0.5)
        second.commit("s2", [("k3", 0)], _answer(), cost_usd=0.25, request_id="r0")
        second.fail("s3", [("k4", 0)], "HTTP 400: bad request", retryable=False)
        first.add_batch("file-1", {"s4": ["k5"]}, reserved_usd=2.0)
        first.batch_created("file-1", "batch-1")

        async def in_flight() -> None:
            await second.begin_async("r1", "s5", ["k6"], 1.5)
            await second.begin_async("r2", "s6", ["k7"], 0.75)
            await second.charge_async("r2", "s6", 0.75, "timeout")

        asyncio.run(in_flight())
        reader = JournalReader(tmp_path)  # read while both writers are open
        answers = list(reader.answers())
        assert answers[0] == Answer("s1", 0, "m", "stop", 0.25, 5, 4, 2, 2)  # each sample's share of usage
        assert [(a.seed_id, a.sample_index) for a in answers] == [("s1", 0), ("s1", 1), ("s2", 0)]
        assert [(r.request_id, r.seed_id, r.reserved_usd) for r in reader.reservations()] == [("r1", "s5", 1.5)]
        assert [(c.request_id, c.usd, c.kind) for c in reader.charges()] == [("r2", 0.75, "timeout")]
        assert list(reader.dead_letters()) == [DeadLetter("s3", 0, "HTTP 400: bad request", False)]
        assert list(reader.batches()) == [BatchJob("batch-1", "file-1", 2.0, "submitted")]
        assert next(reader.batches()).open
        assert reader.epochs() == [3, None]
        totals = reader.totals()
        assert (totals.answers, totals.orphans) == (3, 1)
        assert totals.spent_usd == pytest.approx(0.5 + 0.25 + 0.75 + 1.5 + 2.0)
        assert totals.tokens == {"prompt": 20, "completion": 14, "reasoning": 6, "cached_prompt": 8}
        assert journal_totals(tmp_path) == (pytest.approx(totals.spent_usd), 1)
        assert journal_tokens(tmp_path) == totals.tokens
        first.close_batch("file-1", "completed")
        assert JournalReader(tmp_path).totals().spent_usd == pytest.approx(0.5 + 0.25 + 0.75 + 1.5)
    finally:
        first.close()
        second.close()


def test_a_shard_written_before_reasoning_columns_reads_them_as_zero(tmp_path):
    legacy = tmp_path / "journal.sqlite"  # the single-file journal of early runs
    with closing(sqlite3.connect(legacy)) as db:
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, seed_id TEXT NOT NULL, sample_index INTEGER NOT NULL, "
                   "text TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER "
                   "NOT NULL, model TEXT NOT NULL, created REAL NOT NULL, cost_usd REAL NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO responses VALUES ('k', 's', 0, 'x', 'stop', 9, 8, 'm', 0, 0.1)")
        db.commit()
    before = legacy.read_bytes()
    reader = JournalReader(tmp_path)
    assert list(reader.answers()) == [Answer("s", 0, "m", "stop", 0.1, 9, 8, 0, 0)]
    assert reader.totals().tokens == {"prompt": 9, "completion": 8, "reasoning": 0, "cached_prompt": 0}
    assert list(reader.reservations()) == [] and reader.epochs() == [None]
    assert legacy.read_bytes() == before  # read-only: no column added, nothing written
