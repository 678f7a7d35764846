"""LLM-as-judge: a judge teacher scores each record on a rubric; keep at or above `min_score`.

The judge answers with structured output (a JSON schema where the server enforces one, repaired and
validated otherwise). Its requests go through the same journal as the teacher's, so a resumed run
never pays twice for a verdict. Records are judged in batches of `batch` and come out in the order
they went in (later per-seed steps rely on it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field

from distilforge.core.budget import Budget
from distilforge.core.config import GenerationConfig, JudgeFilterSpec
from distilforge.core.journal import Journal
from distilforge.core.prices import lookup_price
from distilforge.core.records import Record, Seed
from distilforge.core.steps import Filter
from distilforge.modes import Prompter
from distilforge.modes.generate import Generate
from distilforge.prompts import render
from distilforge.teachers import make_teacher
from distilforge.teachers.structured import parse_model, response_format


class Verdict(BaseModel):
    correctness: int = Field(ge=1, le=5)
    relevance: int = Field(ge=1, le=5)
    clarity: int = Field(ge=1, le=5)
    reason: str = ""

    @property
    def score(self) -> float:
        return (self.correctness + self.relevance + self.clarity) / 3


class JudgeFilter(Filter):
    name = "judge"

    def __init__(self, spec: JudgeFilterSpec):
        super().__init__()
        self.spec = spec
        self.journal: Journal | None = None
        self.cost_usd = 0.0

    def bind(self, journal: Journal) -> None:
        self.journal = journal

    def check(self, record: Record) -> str | None:  # verdicts are asynchronous: see run()
        return None

    def _generate(self, teacher: Any) -> Generate:
        assert self.journal is not None, "JudgeFilter.bind(journal) first"
        generation = GenerationConfig(mode="instruct", samples_per_seed=1)
        params = self.spec.teacher.params.model_dump(mode="json")
        identity = {"judge": self.spec.teacher.model, "params": params, "rubric": self.spec.rubric}
        self._budget = Budget(lookup_price(self.spec.teacher.model))
        return Generate(teacher, self.journal, generation, identity, budget=self._budget,
                        completion_budget=self.spec.teacher.completion_budget(), supports_n=False,
                        prompter=Prompter(generation))

    def _ask(self, record: Record) -> Seed:
        answer = record.output if record.output is not None else record.text
        content = render("judge.jinja", rubric=self.spec.rubric, question=record.instruction or record.question,
                         answer=answer)
        return Seed(seed_id=f"judge:{record.seed_id}/{record.sample_index}", question=record.question, gold=None,
                    answer_type="text", source="judge", messages=[{"role": "user", "content": content}])

    async def _judge(self, generate: Generate, batch: list[Record]) -> AsyncIterator[Record]:
        asks = [self._ask(r) for r in batch]

        async def stream() -> AsyncIterator[Seed]:
            for ask in asks:
                yield ask

        verdicts = {v.seed_id: v async for v in generate.run(stream())}
        for record, ask in zip(batch, asks, strict=True):
            self.n_in += 1
            reply = verdicts.get(ask.seed_id)
            if reply is None:
                self.reject(record, self.name, "no verdict: the judge request failed")
                continue
            verdict, error = parse_model(reply.text, Verdict)
            if verdict is None:
                self.reject(record, self.name, f"unreadable verdict ({error})")
                continue
            record.judge_score = round(verdict.score, 3)
            record.judge_scores = json.dumps(verdict.model_dump())
            if verdict.score < self.spec.min_score:
                self.reject(record, self.name, f"score {verdict.score:.2f} < {self.spec.min_score}: {verdict.reason}")
                continue
            self.n_out += 1
            yield record

    async def run(self, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        config = self.spec.teacher
        if config.backend in ("openai", "vllm") and config.params.response_format is None:
            config = config.model_copy(deep=True)
            config.params.response_format = response_format(Verdict, "verdict")
        teacher = make_teacher(config)
        await teacher.start()
        try:
            generate = self._generate(teacher)
            batch: list[Record] = []
            async for record in records:
                batch.append(record)
                if len(batch) >= self.spec.batch:
                    async for kept in self._judge(generate, batch):
                        yield kept
                    batch = []
            if batch:
                async for kept in self._judge(generate, batch):
                    yield kept
        finally:
            self.cost_usd = self._budget.spent_this_run if hasattr(self, "_budget") else 0.0
            await teacher.aclose()
