"""Near-duplicate removal over the whole kept set: global filters, run as the second stage.

MinHash LSH (datasketch) on word shingles of the rationale finds pairs above a Jaccard threshold in
near-constant time per record; the first record of a pair (in seed_id order) stays. Embedding dedup
uses all-MiniLM-L6-v2 cosine similarity, for paraphrases that share few words. Both see the kept
records of every rank in seed_id order (the second stage sorts them), so the result does not depend
on how the run was sharded. Their index is opened lazily, on the first record.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from distilforge.pipeline.steps import Filter
from distilforge.schemas import EmbeddingDedupSpec, MinhashFilterSpec
from distilforge.schemas.records import Record

_WORD = re.compile(r"[a-z0-9]+")


def _body(record: Record) -> str:
    return record.rationale or record.output or record.text or ""


class MinhashDedup(Filter):
    name = "minhash"

    def __init__(self, spec: MinhashFilterSpec):
        self.spec = spec
        self._lsh: Any = None
        self._count = 0

    def signature(self, text: str) -> Any:
        from datasketch import MinHash

        words = _WORD.findall(text.lower())
        k = self.spec.shingle
        shingles = {" ".join(words[i : i + k]).encode() for i in range(max(1, len(words) - k + 1))}
        m = MinHash(num_perm=self.spec.num_perm)
        m.update_batch(list(shingles))
        return m

    def check(self, record: Record) -> str | None:
        if self._lsh is None:
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=self.spec.threshold, num_perm=self.spec.num_perm)
        m = self.signature(_body(record))
        match = self._lsh.query(m)
        if match:
            return f"near-duplicate (Jaccard >= {self.spec.threshold}) of {match[0]}"
        self._lsh.insert(f"{record.seed_id}/{record.sample_index}#{self._count}", m)
        self._count += 1
        return None


class EmbeddingDedup(Filter):
    name = "embedding_dedup"

    def __init__(self, spec: EmbeddingDedupSpec):
        self.spec = spec
        self._embedder: Any = None
        self._matrix = np.zeros((0, 384), dtype=np.float32)
        self._size = 0
        self._ids: list[str] = []

    def check(self, record: Record) -> str | None:
        if self._embedder is None:
            from distilforge.models.embeddings import Embedder

            self._embedder = Embedder()
            self._matrix = np.zeros((1024, 384), dtype=np.float32)  # grows by doubling
        vector = self._embedder.encode([_body(record)])[0]
        if self._size:
            sims = self._matrix[: self._size] @ vector
            best = int(sims.argmax())
            if sims[best] >= self.spec.threshold:
                return f"cosine {sims[best]:.3f} with {self._ids[best]}"
        if self._size == len(self._matrix):
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[self._size] = vector
        self._size += 1
        self._ids.append(f"{record.seed_id}/{record.sample_index}")
        return None
