"""LLM-as-judge: a judge teacher scores each record on a rubric; keep at or above `min_score`.

The judge answers with structured output (negotiated per endpoint: a JSON schema where the server
enforces one, JSON mode or plain text otherwise, then repaired and validated). Its requests go
through the run's Sampler as stage `judge`: the same journal (a resumed run never pays twice for a
verdict) and the same budget (the cap covers generation and judging together). Records are judged in
batches of `batch` and come out in the order they went in (later per-seed steps rely on it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from distilforge.core.prices import judge_prices
from distilforge.pipeline.steps import Filter, current_context
from distilforge.prompts import render
from distilforge.schemas import JudgeFilterSpec, TeacherConfig
from distilforge.schemas.records import Record
from distilforge.schemas.teacher_answers import Verdict
from distilforge.teachers.sampler import Outcome, open_sampler, sample_many
from distilforge.teachers.structured import parse_model, with_schema


def judge_teacher(spec: JudgeFilterSpec) -> TeacherConfig:
    """The judge's teacher config, asking servers that speak the OpenAI API for a JSON verdict."""
    return with_schema(spec.teacher, Verdict, "verdict")


class JudgeFilter(Filter):
    name = "judge"

    def __init__(self, spec: JudgeFilterSpec):
        self.spec = spec

    def check(self, record: Record) -> str | None:  # verdicts are asynchronous: see run()
        return None

    def _messages(self, record: Record) -> list[dict[str, str]]:
        answer = record.output if record.output is not None else record.text
        content = render("judge.jinja", rubric=self.spec.rubric, question=record.instruction or record.question,
                         answer=answer)
        return [{"role": "user", "content": content}]

    def _decide(self, record: Record, outcome: Outcome) -> str | None:
        if not outcome.samples:
            why = "stopped before it was asked" if outcome.not_sent else "the judge request failed"
            return f"no verdict: {why}"
        verdict, error = parse_model(outcome.samples[0].completion.text, Verdict)
        if verdict is None:
            return f"unreadable verdict ({error})"
        record.judge_score = round(verdict.score, 3)
        record.judge_scores = json.dumps(verdict.model_dump())
        if verdict.score < self.spec.min_score:
            return f"score {verdict.score:.2f} < {self.spec.min_score}: {verdict.reason}"
        return None

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        ctx = current_context()
        identity = {"judge": self.spec.teacher.model, "params": self.spec.teacher.params.model_dump(mode="json"),
                    "rubric": self.spec.rubric}
        sampler = await open_sampler(ctx, self.name, judge_teacher(self.spec), stage="judge", identity=identity,
                                     prices=judge_prices(ctx.config, self.spec))
        stats = self.stats
        batch: list[Record] = []

        async def judge() -> list[Record]:
            asks = [(f"judge:{r.seed_id}/{r.sample_index}", self._messages(r)) for r in batch]
            outcomes = await sample_many(sampler, asks)
            kept = []
            for record, outcome in zip(batch, outcomes, strict=True):
                stats.n_in += 1
                detail = self._decide(record, outcome)
                if detail is None:
                    stats.n_out += 1
                    kept.append(record)
                else:
                    self.reject(record, self.name, detail)
            return kept

        async for record in records:
            batch.append(record)
            if len(batch) >= self.spec.batch:
                for kept in await judge():
                    yield kept
                batch = []
        if batch:
            for kept in await judge():
                yield kept
