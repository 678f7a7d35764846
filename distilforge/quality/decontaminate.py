"""Drop records that share a long n-gram (13 words by default) with an evaluation set.

The eval sets' n-grams are hashed into one in-memory set (GSM8K test: ~60k n-grams), built once per
rank on the first record; each record's question and rationale are checked against it. Counts are
kept per eval set (`per_eval_set` in the step's stats).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
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


class Decontaminate(Filter):
    name = "decontaminate"

    def __init__(self, spec: DecontaminateSpec):
        self.spec = spec
        self._index: dict[int, str] | None = None

    def _build(self) -> dict[int, str]:
        index: dict[int, str] = {}
        for source in self.spec.eval_sets:
            label = eval_set_label(source)
            for _, row in iter_rows(source, split=self.spec.split):
                for field in self.spec.fields:
                    value = row.get(field) if isinstance(row, dict) else None
                    if isinstance(value, str):
                        for gram in ngrams(value, self.spec.ngram):
                            index.setdefault(gram, label)
        return index

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        if self._index is None:  # reading the eval sets is file work: not on the event loop
            self._index = await asyncio.to_thread(self._build)
        async for record in super().run(records, rank, world_size):
            yield record

    def check(self, record: Record) -> str | None:
        if self._index is None:
            self._index = self._build()
        n = self.spec.ngram
        for text in (record.question, record.rationale or record.output or record.text):
            for gram in ngrams(text, n):
                label = self._index.get(gram)
                if label is not None:
                    self.stat_update(f"per_eval_set.{label}")
                    return f"shares a {n}-gram with eval set {label}"
        return None
