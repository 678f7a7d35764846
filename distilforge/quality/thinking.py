"""Checks on a reasoning teacher's trace (`thinking:` in the config). Records without a trace pass.

Each says only what it rejects and why; the defaults keep any finished, well-formed trace.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

from distilforge.core.grading import canonical, grade, split_answer
from distilforge.core.reasoning import CLOSE, OPEN
from distilforge.pipeline.steps import Filter
from distilforge.schemas import ThinkingConfig
from distilforge.schemas.records import Record

MIN_OTHER_LETTERS = 50  # language mixing is never judged on a handful of letters (a π, a name)


def trace_tokens(record: Record) -> int:
    """The server's count when it reported one, else about 4 characters a token."""
    return record.reasoning_tokens or math.ceil(len(record.reasoning or "") / 4)


class MalformedThinking(Filter):
    """A second think block (in the trace or the final answer): the student gets exactly one."""

    name = "malformed_thinking"

    def check(self, record: Record) -> str | None:
        for where, text in (("trace", record.reasoning or ""), ("final answer", record.text)):
            if OPEN in text or CLOSE in text:
                return f"a think tag inside the {where}"
        return None


class ThinkingLength(Filter):
    name = "thinking_length"

    def __init__(self, spec: ThinkingConfig):
        self.low, self.high = spec.min_tokens, spec.max_tokens

    def check(self, record: Record) -> str | None:
        if record.reasoning is None:
            return None
        tokens = trace_tokens(record)
        if tokens < self.low:
            return f"{tokens} thinking tokens, fewer than thinking.min_tokens {self.low}"
        if self.high is not None and tokens > self.high:
            return f"{tokens} thinking tokens, more than thinking.max_tokens {self.high}"
        return None


class ThinkingLoop(Filter):
    """A trace stuck in a loop: one n-gram repeated often enough to fill a share of it."""

    name = "thinking_loop"

    def __init__(self, spec: ThinkingConfig):
        self.n, self.repeats, self.share = spec.loop_ngram, spec.loop_repeats, spec.loop_share

    def check(self, record: Record) -> str | None:
        if record.reasoning is None or self.repeats is None:
            return None
        words = record.reasoning.lower().split()
        if len(words) < self.n * self.repeats:
            return None
        grams = Counter(tuple(words[i:i + self.n]) for i in range(len(words) - self.n + 1))
        gram, count = grams.most_common(1)[0]
        if count >= self.repeats and count * self.n / len(words) >= self.share:
            return f"{' '.join(gram)!r} repeated {count} times"
        return None


def _script(char: str) -> str | None:
    """A letter's script (LATIN, CJK, CYRILLIC, ...); None for anything else. Greek letters are maths."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    script = name.split(" ", 1)[0]
    return None if script in ("GREEK", "") else script


def script_counts(text: str) -> Counter[str]:
    return Counter(s for s in map(_script, text) if s is not None)


class LanguageMixing(Filter):
    """A trace written in another script than the question's, above a share of its letters."""

    name = "language_mixing"

    def __init__(self, spec: ThinkingConfig):
        self.share = spec.other_script_share

    def check(self, record: Record) -> str | None:
        if record.reasoning is None or self.share is None:
            return None
        asked = script_counts(record.question)
        home = asked.most_common(1)[0][0] if asked else "LATIN"
        letters = script_counts(record.reasoning)
        total = sum(letters.values())
        other = total - letters.get(home, 0)
        if other >= MIN_OTHER_LETTERS and other > self.share * total:
            scripts = ", ".join(s.lower() for s, _ in (letters - Counter({home: letters.get(home, 0)})).most_common(2))
            return f"{other} of {total} letters of the thinking are not {home.lower()} ({scripts})"
        return None


class AnswerNotInThinking(Filter):
    """The trace's last stated answer differs from the final one (when both can be read)."""

    name = "answer_not_in_thinking"

    def check(self, record: Record) -> str | None:
        if record.reasoning is None or record.answer is None:
            return None
        _, stated = split_answer(record.reasoning)
        if stated is None or canonical(stated, record.answer_type) is None:
            return None
        if grade(stated, record.answer, record.answer_type):
            return None
        return f"the thinking concludes {stated[:40]!r}, the final answer is {record.answer!r}"


def thinking_filters(spec: ThinkingConfig, answerable: bool) -> list[Filter]:
    """The trace checks, in order; the answer check only where answers are read (cot, icl)."""
    steps: list[Filter] = [MalformedThinking(), ThinkingLength(spec), ThinkingLoop(spec), LanguageMixing(spec)]
    if answerable and spec.answer_supported:
        steps.append(AnswerNotInThinking())
    return steps
