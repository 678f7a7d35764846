"""In-context learning (`mode: icl`): each query gets k demonstrations from a pool, never itself.

Demonstrations are drawn at random (seeded per query, so a rerun asks the same prompt and hits the
journal) or as nearest neighbours by all-MiniLM-L6-v2 embeddings. The pool is held in memory: it is
a demonstration set (hundreds to a few thousand rows), not the seed stream.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from distilforge.core.grading import split_answer
from distilforge.core.seeds import read_questions
from distilforge.modes import Prompter, student_prompt
from distilforge.prompts import ANSWER_HINTS, build_messages, render
from distilforge.schemas import ConfigError, GenerationConfig
from distilforge.schemas.records import Seed


def _demo_answer(raw_answer: str | None, gold: str | None) -> str:
    """A worked answer ending in the same 'The answer is X.' line the teacher is asked for."""
    if raw_answer is None:
        return f"The answer is {gold}."
    rationale, _ = split_answer(raw_answer)
    rationale = rationale.replace("<<", "").replace(">>", " ")  # GSM8K calculator marks
    return f"{rationale}\nThe answer is {gold}." if rationale and rationale != raw_answer.strip() else f"The answer is {gold}."


class IclPrompter(Prompter):
    def __init__(self, generation: GenerationConfig):
        super().__init__(generation)
        self.icl = generation.icl
        self.blocking = self.icl.selection == "nearest"
        self.pool: list[dict[str, Any]] = []
        self._vectors: Any = None
        self._embedder: Any = None

    def check(self, seeds_path: str | None = None) -> None:
        path = self.icl.pool or seeds_path
        if path is None:
            raise ConfigError("generation.icl.pool: a demonstration file is needed")
        rows = sum(1 for _ in read_questions(path, self.icl.fields, answer_type=self.generation.answer_type))
        if rows <= self.icl.k:
            raise ConfigError(f"generation.icl.pool: the pool ({path}) needs more than k={self.icl.k} rows")
        if self.icl.selection == "nearest":
            from distilforge.models.embeddings import minilm_path

            minilm_path()

    def prepare(self, seeds_path: str | None = None) -> None:
        path = self.icl.pool or seeds_path
        if path is None:
            raise ConfigError("generation.icl.pool: a demonstration file is needed")
        fields = self.icl.fields
        for seed in read_questions(path, fields, answer_type=self.generation.answer_type):
            raw = None
            if fields.answer is not None:
                # Keep the worked solution (GSM8K's steps) when the gold field has one.
                raw = seed.meta.get("raw_answer")
            self.pool.append({"id": seed.seed_id, "question": seed.question,
                              "answer": _demo_answer(raw if isinstance(raw, str) else None, seed.gold)})
        if len(self.pool) <= self.icl.k:
            raise ConfigError(f"generation.icl.pool: the pool ({path}) needs more than k={self.icl.k} rows")
        if self.icl.selection == "nearest":
            from distilforge.models.embeddings import Embedder

            self._embedder = Embedder()
            self._vectors = self._embedder.encode([d["question"] for d in self.pool])

    def _choose(self, seed: Seed) -> list[dict[str, Any]]:
        def allowed(demo: dict[str, Any]) -> bool:
            # Never the query itself: not by id, and not by text (the same question under another id).
            return demo["id"] != seed.seed_id and demo["question"].strip() != seed.question.strip()

        if self._vectors is not None:
            query = self._embedder.encode([seed.question])[0]
            order = (-(self._vectors @ query)).argsort()
            return [self.pool[i] for i in order if allowed(self.pool[i])][: self.icl.k]
        rng = random.Random(int(hashlib.sha256(f"{self.generation.rng_seed}:{seed.seed_id}".encode()).hexdigest()[:12], 16))
        candidates = [d for d in self.pool if allowed(d)]
        return rng.sample(candidates, self.icl.k)

    def build(self, seed: Seed) -> tuple[list[dict[str, str]], dict[str, Any]]:
        demos = self._choose(seed)
        messages = build_messages(seed, self.generation, demos=demos)
        fields: dict[str, Any] = {"mode": "icl", "template": self.template, "template_sha": self.template_sha,
                                  "demo_ids": [d["id"] for d in demos]}
        if self.icl.student_format == "zero-shot" and self.generation.student_prompt == "question":
            fields["student_prompt"] = student_prompt(seed, seed.question)
        elif self.icl.student_format == "zero-shot":
            # The student learns to answer the question in the chain-of-thought prompt, without demonstrations.
            content = render("cot.jinja", question=seed.question,
                             answer_hint=ANSWER_HINTS.get(seed.answer_type, "the final answer"))
            fields["student_prompt"] = student_prompt(seed, content)
        elif seed.context:
            fields["student_prompt"] = student_prompt(seed, messages[-1]["content"])
        return messages, fields
