"""Generation modes: how a seed becomes teacher messages, how an answer is read, which checks apply.

`cot` and `icl` have answers to check (numbers, yes/no, letters, text); `instruct`, `self-instruct`
and `evol-instruct` produce instruction data, checked for completeness and novelty instead.
"""

from __future__ import annotations

import functools
from typing import Any

from distilforge.core.grading import canonical, split_answer
from distilforge.core.reasoning import think_turn
from distilforge.pipeline.steps import Filter, Map
from distilforge.prompts import build_messages, template_hash
from distilforge.quality.builtin import Empty, Refusal, Truncated, UnfinishedThinking, default_filters
from distilforge.schemas import GenerationConfig
from distilforge.schemas.records import Record, Seed

ANSWERABLE = ("cot", "icl")


class Prompter:
    """Builds the teacher's messages for a seed and the provenance fields its records carry."""

    blocking = False  # True when `build` does heavy work (model inference) and must leave the event loop

    def __init__(self, generation: GenerationConfig):
        self.generation = generation
        self.template = generation.template_name
        self.template_sha = template_hash(self.template)

    def prepare(self, seeds_path: str | None = None) -> None:
        """Load what the mode needs once (ICL: the demonstration pool)."""

    def check(self, seeds_path: str | None = None) -> None:
        """Raise an input error now if `prepare` would fail (cheap: no model is loaded)."""

    def build(self, seed: Seed) -> tuple[list[dict[str, str]], dict[str, Any]]:
        messages = build_messages(seed, self.generation)
        fields: dict[str, Any] = {"mode": self.generation.mode, "template": self.template,
                                  "template_sha": self.template_sha}
        if self.generation.mode not in ANSWERABLE:
            fields["instruction"] = seed.question
            fields["input"] = seed.input
            fields["parent_id"] = seed.meta.get("parent_id")
            user = seed.question + (f"\n\n{seed.input}" if seed.input else "")
            fields["student_prompt"] = student_prompt(seed, user)
        elif self.generation.student_prompt == "question":
            # The student learns to answer the question as users ask it, not the teacher's instructions.
            fields["student_prompt"] = student_prompt(seed, seed.question)
        elif seed.context:
            fields["student_prompt"] = student_prompt(seed, messages[-1]["content"])
        return messages, fields


def student_prompt(seed: Seed, question: str) -> list[dict[str, str]]:
    """What the student sees: the seed's own context (openai-chat seeds: system turns and earlier
    turns, kept; `generation.system_prompt` is the teacher's alone), then the question as asked."""
    return [*(seed.context or []), {"role": "user", "content": question}]


def make_prompter(generation: GenerationConfig) -> Prompter:
    if generation.mode == "icl":
        from distilforge.modes.icl import IclPrompter

        return IclPrompter(generation)
    return Prompter(generation)


def parse_record(record: Record, thinking: bool = False) -> Record:
    """Answerable modes: rationale + canonical final answer. Instruction modes: the output text.

    Both come from the final answer only (the trace is `record.reasoning`). `thinking`
    (`train.format: thinking`): the student's answer turn is the think block, then the answer.
    """
    if record.mode not in ANSWERABLE:
        record.output = record.text.strip()
    else:
        rationale, raw = split_answer(record.text)
        record.rationale = rationale
        record.meta["answer_raw"] = raw
        record.answer = canonical(raw, record.answer_type) if raw is not None else None
    if thinking:
        record.assistant = think_turn(record.reasoning, record.output if record.output is not None else record.text)
    return record


def filters_for(mode: str) -> list[Filter]:
    """The built-in checks of a mode, before the configured filters (`duplicate` goes after them)."""
    if mode in ANSWERABLE:
        return default_filters()
    return [UnfinishedThinking(), Truncated(), Empty(), Refusal()]


def ParseAnswer(thinking: bool = False) -> Map:
    """The parse step: each mode reads its answers (rationale + final answer, or an instruction's output)."""
    return Map("parse", functools.partial(parse_record, thinking=True) if thinking else parse_record)
