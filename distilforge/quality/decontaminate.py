"""Drop records that hold most of an evaluation question: its long n-grams (13 words by default).

A record is contaminated when its question and rationale together hold at least `min_overlap` (half, by
default) of some eval question's own n-grams: a copy holds all of them, a copy inside a longer text too.
An n-gram found in `common_in` or more eval questions is the set's template (BIG-Bench's "are playing a
game. At the start of the game, they are each holding a ball", an instruction, an option list), not a
question's own. Matching any one shared n-gram, as GPT-3's rule does, made every question of a templated
task read as contaminated (the template, or a run of its few names), and nothing was kept.

The index (n-gram -> the eval questions holding it; GSM8K test: ~60k n-grams) is built once per rank on the
first record. Counts are kept per eval set (`per_eval_set` in the step's stats).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from distilforge.core.seeds import iter_rows
from distilforge.pipeline.steps import Filter
from distilforge.schemas import DecontaminateSpec
from distilforge.schemas.records import Record

_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n: int) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def eval_set_label(source: str) -> str:
    return Path(source).stem if Path(source).exists() else source


@dataclass
class EvalIndex:
    """Each eval question's own n-grams, by n-gram: most are held by one question, a few by two or more."""

    first: dict[int, int] = field(default_factory=dict)  # n-gram -> the first question holding it
    more: dict[int, list[int]] = field(default_factory=dict)  # n-gram -> the other questions holding it
    sizes: list[int] = field(default_factory=list)  # each question's own n-grams
    labels: list[str] = field(default_factory=list)  # each question's eval set

    def add(self, grams: set[int], label: str) -> None:
        number = len(self.sizes)
        self.sizes.append(len(grams))
        self.labels.append(label)
        for gram in grams:
            if gram in self.first:
                self.more.setdefault(gram, []).append(number)
            else:
                self.first[gram] = number

    def held(self, grams: set[int]) -> Counter[int]:
        """How many of each eval question's own n-grams are among `grams`."""
        hits: Counter[int] = Counter()
        for gram in grams:
            number = self.first.get(gram)
            if number is not None:
                hits[number] += 1
                hits.update(self.more.get(gram, ()))
        return hits


class Decontaminate(Filter):
    name = "decontaminate"

    def __init__(self, spec: DecontaminateSpec):
        self.spec = spec
        self._index: EvalIndex | None = None

    def _questions(self) -> list[tuple[set[int], str]]:
        """Every distinct eval question's n-grams and its set's label."""
        seen: set[int] = set()
        questions: list[tuple[set[int], str]] = []
        for source in self.spec.eval_sets:
            label = eval_set_label(source)
            for _, row in iter_rows(source, split=self.spec.split):
                texts = [row.get(f) for f in self.spec.fields] if isinstance(row, dict) else []
                grams = set().union(*(ngrams(t, self.spec.ngram) for t in texts if isinstance(t, str)))
                key = hash(tuple(sorted(grams)))
                if grams and key not in seen:  # a question listed twice is one question, not a template
                    seen.add(key)
                    questions.append((grams, label))
        return questions

    def _build(self) -> EvalIndex:
        questions = self._questions()
        common = self.spec.common_in
        holders = Counter(gram for grams, _ in questions for gram in grams) if common is not None else Counter()
        index = EvalIndex()
        for grams, label in questions:
            index.add({g for g in grams if common is None or holders[g] < common}, label)
        return index

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        if self._index is None:  # reading the eval sets is file work: not on the event loop
            self._index = await asyncio.to_thread(self._build)
        async for record in super().run(records, rank, world_size):
            yield record

    def check(self, record: Record) -> str | None:
        if self._index is None:
            self._index = self._build()
        n, index = self.spec.ngram, self._index
        grams = ngrams(record.question, n) | ngrams(record.rationale or record.output or record.text, n)
        for number, hits in index.held(grams).most_common():
            size = index.sizes[number]
            if size and hits / size >= self.spec.min_overlap:
                label = index.labels[number]
                self.stat_update(f"per_eval_set.{label}")
                return f"holds {hits} of the {size} {n}-grams of a question in eval set {label}"
        return None
