"""The first rationale-quality filters. Each says only what it rejects and why."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from distilforge.core.grading import grade, is_refusal
from distilforge.core.reasoning import unfinished
from distilforge.pipeline.steps import Filter
from distilforge.schemas.records import Record


class UnfinishedThinking(Filter):
    """A thinking with no final answer after it: cut by the token limit inside the trace, or never answered."""

    name = "unfinished_thinking"

    def check(self, record: Record) -> str | None:
        if not unfinished(record.text, record.reasoning):
            return None
        cut = " (hit the token limit)" if record.finish_reason == "length" else ""
        return f"{len(record.reasoning or '')} characters of thinking and no final answer{cut}"


class Truncated(Filter):
    name = "truncated"

    def check(self, record: Record) -> str | None:
        if record.finish_reason == "length":
            return f"hit max_tokens after {record.completion_tokens} tokens"
        return None


class Empty(Filter):
    name = "empty"

    def check(self, record: Record) -> str | None:
        return "empty completion" if not record.text.strip() else None


class Refusal(Filter):
    name = "refusal"

    def check(self, record: Record) -> str | None:
        return f"refused: {record.text.strip()[:60]!r}" if is_refusal(record.text) else None


class Unparseable(Filter):
    name = "unparseable"

    def check(self, record: Record) -> str | None:
        if record.answer is None:
            raw = record.meta.get("answer_raw")
            if raw:
                return f"stated answer {raw[:60]!r} is not a {record.answer_type} answer"
            return "no final answer stated"
        return None


class WrongAnswer(Filter):
    """Numeric-aware: answers and gold are canonical (exact fractions for numbers) before comparing."""

    name = "wrong_answer"

    def check(self, record: Record) -> str | None:
        if record.gold is None:
            return None
        raw = record.meta.get("answer_raw", record.answer)
        if grade(raw, record.gold, record.answer_type, record.meta.get("gold_raw")):
            return None
        return f"answered {record.answer or raw}, gold {record.gold}"


class ExactDuplicate(Filter):
    """A rationale already kept for the same seed (whitespace and case folded).

    It runs after every other per-record filter, so what it remembers has passed them all: a
    rationale rejected later for another reason never makes a good copy of it a duplicate.
    """

    name = "duplicate"
    # Generate emits each seed's samples as one group, and filters keep the order, so remembering the
    # last few seeds is enough: memory stays flat with the number of seeds.
    max_seeds = 64

    def __init__(self) -> None:
        self._seen: OrderedDict[str, set[bytes]] = OrderedDict()

    def check(self, record: Record) -> str | None:
        norm = " ".join(record.text.lower().split())
        digest = hashlib.blake2b(norm.encode(), digest_size=8).digest()
        seen = self._seen.get(record.seed_id)
        if seen is None:
            seen = self._seen[record.seed_id] = set()
            if len(self._seen) > self.max_seeds:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(record.seed_id)
        if digest in seen:
            return f"same rationale as an earlier sample of seed {record.seed_id}"
        seen.add(digest)
        return None


def default_filters() -> list[Filter]:
    """The checks that always run first, cheapest and most certain first (`duplicate` runs last of all)."""
    return [UnfinishedThinking(), Truncated(), Empty(), Refusal(), Unparseable(), WrongAnswer()]
