"""Drop records that share a long n-gram (13 words by default) with an evaluation set.

The eval sets' n-grams are hashed into one in-memory set (GSM8K test: ~60k n-grams); each record's
question and rationale are checked against it. Counts are kept per eval set.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from distilforge.core.config import DecontaminateSpec
from distilforge.core.records import Record
from distilforge.core.seeds import iter_rows
from distilforge.core.steps import Filter

_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n: int) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


class Decontaminate(Filter):
    name = "decontaminate"

    def __init__(self, spec: DecontaminateSpec):
        super().__init__()
        self.spec = spec
        self.index: dict[int, str] = {}
        self.per_set: Counter[str] = Counter()
        for source in spec.eval_sets:
            label = Path(source).stem if Path(source).exists() else source
            for _, row in iter_rows(source, split=spec.split):
                for field in spec.fields:
                    value = row.get(field) if isinstance(row, dict) else None
                    if isinstance(value, str):
                        for gram in ngrams(value, spec.ngram):
                            self.index.setdefault(gram, label)

    def check(self, record: Record) -> str | None:
        n = self.spec.ngram
        for text in (record.question, record.rationale or record.output or record.text):
            for gram in ngrams(text, n):
                label = self.index.get(gram)
                if label is not None:
                    self.per_set[label] += 1
                    return f"shares a {n}-gram with eval set {label}"
        return None

    def report(self) -> dict[str, object]:
        return {**super().report(), "per_eval_set": dict(self.per_set)}
