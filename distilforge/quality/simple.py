"""Cheap per-record checks: length bounds, and a rationale that concludes what it answers."""

from __future__ import annotations

import re

from distilforge.core.grading import canonical
from distilforge.pipeline.steps import Filter
from distilforge.schemas import LengthFilterSpec
from distilforge.schemas.records import Record

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


class LengthFilter(Filter):
    name = "length"

    def __init__(self, spec: LengthFilterSpec):
        super().__init__()
        self.spec = spec

    def check(self, record: Record) -> str | None:
        body = record.rationale if record.mode in ("cot", "icl") else (record.output or record.text)
        words = len(body.split())
        if words < self.spec.min_words:
            return f"{words} words, below {self.spec.min_words}"
        if words > self.spec.max_words:
            return f"{words} words, above {self.spec.max_words}"
        if self.spec.max_ratio is not None:
            ratio = words / max(1, len(record.question.split()))
            if ratio > self.spec.max_ratio:
                return f"{ratio:.1f}x the question's length, above {self.spec.max_ratio}"
        return None


class ConsistencyFilter(Filter):
    """The rationale's last computed number is the stated answer (numeric answers only).

    A chain that computes 18 and then says "The answer is 20" is wrong reasoning that happened to be
    followed by a guess; it teaches the student to ignore its own steps.
    """

    name = "consistency"

    def check(self, record: Record) -> str | None:
        if record.answer_type != "number" or record.answer is None or not record.rationale:
            return None
        numbers = _NUMBER.findall(record.rationale)
        if not numbers:
            return None
        last = canonical(numbers[-1], "number")
        if last is not None and last != record.answer:
            return f"rationale ends at {last} but answers {record.answer}"
        return None
