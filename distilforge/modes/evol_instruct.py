"""Evol-Instruct (`mode: evol-instruct`; Xu et al. 2023, WizardLM): make instructions harder, round by round.

Each round evolves every surviving instruction once, in depth (add constraints, deepen, concretize,
increase reasoning steps) or in breadth (a new, rarer prompt in the same domain), the operation drawn
with a seeded RNG per instruction and round. The teacher then answers the evolved instruction. The
WizardLM elimination rules drop failed evolutions: no change from the parent, words copied from the
evolving prompt, an answer that is a short apology, or an answer of only punctuation and stop words.
Survivors are both kept records and the next round's parents.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import AsyncIterator
from typing import Any

from distilforge.modes import Prompter
from distilforge.modes.sampling import build_record
from distilforge.pipeline.steps import PipelineStep, current_context
from distilforge.prompts import render, template_hash
from distilforge.schemas import JobConfig
from distilforge.schemas.records import Record, Seed
from distilforge.teachers import display_model
from distilforge.teachers.sampler import Sampler, open_sampler, sample_many

DEPTH_METHODS = {
    "constraints": "Please add one more constraints/requirements into #Given Prompt#.",
    "deepen": "If #Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #Given Prompt# can be solved with just a few simple thinking processes, you can rewrite it to explicitly request multiple-step reasoning.",
}
OPERATIONS = [*DEPTH_METHODS, "breadth"]
COPIED = re.compile(r"#?(given|rewritten|created) prompt#?", re.I)
STOP_WORDS = {"the", "a", "an", "and", "or", "of", "to", "is", "it", "in", "on", "for", "with", "as", "this", "that"}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def evolution_problem(parent: str, evolved: str) -> str | None:
    if not evolved.strip():
        return "empty evolution"
    if _norm(evolved) == _norm(parent):
        return "equal to its parent (no information gain)"
    if COPIED.search(evolved):
        return "copies words from the evolving prompt"
    return None


def answer_problem(answer: str) -> str | None:
    words = answer.split()
    if "sorry" in answer.lower() and len(words) < 80:
        return "a short apology: the teacher could not answer the evolved instruction"
    if not [w for w in re.findall(r"[a-z0-9]+", answer.lower()) if w not in STOP_WORDS]:
        return "only punctuation and stop words"
    return None


class EvolInstruct(PipelineStep):
    """Evolves the seed instructions it is given (the rank's share, from the pipeline's `SeedSource`) for
    `generation.rounds` rounds. It needs every parent of a round before the next, so it reads its input whole."""

    name = "evol_instruct"
    rejects = True

    def __init__(self, config: JobConfig, round: int = 0):
        self.config = config
        self.round = round
        self.template = config.generation.template_name
        self.template_sha = template_hash(self.template)
        self.answering = config.generation.model_copy(update={"mode": "instruct", "template": None,
                                                              "samples_per_seed": 1})
        self.teacher_model = display_model(config.teacher)

    def _operation(self, seed_id: str, round_no: int) -> str:
        # A targeted round evolves its seeds anew: its number is part of the draw (and of the ids below).
        salt = f":r{self.round}" if self.round else ""
        digest = hashlib.sha256(f"{self.config.generation.rng_seed}:{seed_id}:{round_no}{salt}".encode()).hexdigest()
        return random.Random(int(digest[:12], 16)).choice(OPERATIONS)

    async def _ask(self, sampler: Sampler, seeds: list[Seed], messages: list[list[dict[str, str]]],
                   fields: list[dict[str, Any]]) -> list[Record]:
        ctx = current_context()
        outcomes = await sample_many(sampler, [(s.seed_id, m) for s, m in zip(seeds, messages, strict=True)])
        records = []
        for seed, msgs, extra, outcome in zip(seeds, messages, fields, outcomes, strict=True):
            records += [build_record(seed, s, msgs, extra, self.teacher_model) for s in outcome.samples]
            for missing in outcome.missing(seed.seed_id, ctx.stopped):
                ctx.fail(missing)
        return sorted(records, key=lambda r: (r.seed_id, r.sample_index))

    async def run(self, seeds: AsyncIterator[Seed], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        ctx = current_context()
        sampler = await open_sampler(ctx, "generate", self.config.teacher, stage="generate")
        answer_prompter = Prompter(self.answering)
        stats = self.stats
        parents = [seed async for seed in seeds]
        for round_no in range(1, self.config.generation.rounds + 1):
            if not parents or sampler.stopped:
                break
            asks = []
            for parent in parents:
                op = self._operation(parent.seed_id, round_no)
                content = render(self.template, kind="breadth" if op == "breadth" else "depth",
                                 method=DEPTH_METHODS.get(op, ""), instruction=parent.question)
                suffix = f"r{self.round}.{round_no}" if self.round else str(round_no)
                asks.append(Seed(seed_id=f"{parent.seed_id}~{suffix}", question=parent.question, gold=None,
                                 answer_type="text", source=parent.source, input=parent.input,
                                 messages=[{"role": "user", "content": content}],
                                 meta={"parent_id": parent.seed_id, "operation": op}))
            by_id = {a.seed_id: a for a in asks}
            evolved: list[Seed] = []
            for record in await self._ask(sampler, asks, [a.messages or [] for a in asks], [{} for _ in asks]):
                ask = by_id[record.seed_id]
                stats.n_in += 1
                record.mode, record.template, record.template_sha = "evol-instruct", self.template, self.template_sha
                record.parent_id = ask.meta["parent_id"]
                record.instruction = record.text.strip()
                problem = "truncated evolution" if record.finish_reason == "length" else evolution_problem(
                    ask.question, record.text)
                if problem:
                    self.reject(record, "evolution_failed", f"{ask.meta['operation']}: {problem}")
                    continue
                evolved.append(Seed(seed_id=record.seed_id, question=record.text.strip(), gold=None,
                                    answer_type="text", source=ask.source, meta={"parent_id": ask.meta["parent_id"],
                                                                                 "operation": ask.meta["operation"]}))
            survivors = []
            evolved_by_id = {e.seed_id: e for e in evolved}
            built = [answer_prompter.build(e) for e in evolved]
            answers = await self._ask(sampler, evolved, [m for m, _ in built], [f for _, f in built])
            for record in answers:
                record.mode, record.template, record.template_sha = "evol-instruct", self.template, self.template_sha
                record.round = self.round
                problem = answer_problem(record.text)
                if problem:
                    self.reject(record, "evolution_failed", problem)
                    continue
                survivors.append(evolved_by_id[record.seed_id])
                stats.n_out += 1
                yield record
            parents = survivors
