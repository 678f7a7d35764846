"""Near-duplicate removal over the whole kept set, in seed_id order.

MinHash LSH (datasketch) on word shingles of the rationale finds pairs above a Jaccard threshold in
near-constant time per record; the first record of a pair (in seed_id order) stays. Embedding dedup
uses all-MiniLM-L6-v2 cosine similarity, for paraphrases that share few words.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from distilforge.core.config import EmbeddingDedupSpec, MinhashFilterSpec
from distilforge.quality import GlobalFilter

_WORD = re.compile(r"[a-z0-9]+")


def _body(row: dict[str, Any]) -> str:
    return row.get("rationale") or row.get("output") or row.get("text") or ""


class MinhashDedup(GlobalFilter):
    name = "minhash"

    def __init__(self, spec: MinhashFilterSpec):
        super().__init__()
        from datasketch import MinHash, MinHashLSH

        self.spec = spec
        self._minhash = MinHash
        self.lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm)
        self._count = 0

    def signature(self, text: str) -> Any:
        words = _WORD.findall(text.lower())
        k = self.spec.shingle
        shingles = {" ".join(words[i : i + k]).encode() for i in range(max(1, len(words) - k + 1))}
        m = self._minhash(num_perm=self.spec.num_perm)
        m.update_batch(list(shingles))
        return m

    def check_row(self, row: dict[str, Any]) -> str | None:
        start = time.perf_counter()
        m = self.signature(_body(row))
        match = self.lsh.query(m)
        if match:
            self.seconds += time.perf_counter() - start
            return f"near-duplicate (Jaccard >= {self.spec.threshold}) of {match[0]}"
        self.lsh.insert(f"{row['seed_id']}/{row['sample_index']}#{self._count}", m)
        self._count += 1
        self.seconds += time.perf_counter() - start
        return None


class EmbeddingDedup(GlobalFilter):
    name = "embedding_dedup"

    def __init__(self, spec: EmbeddingDedupSpec):
        super().__init__()
        from distilforge.models.embeddings import Embedder

        self.spec = spec
        self.embedder = Embedder()
        self._matrix = np.zeros((1024, 384), dtype=np.float32)  # grows by doubling
        self._size = 0
        self._ids: list[str] = []

    def check_row(self, row: dict[str, Any]) -> str | None:
        start = time.perf_counter()
        vector = self.embedder.encode([_body(row)])[0]
        if self._size:
            sims = self._matrix[: self._size] @ vector
            best = int(sims.argmax())
            if sims[best] >= self.spec.threshold:
                self.seconds += time.perf_counter() - start
                return f"cosine {sims[best]:.3f} with {self._ids[best]}"
        if self._size == len(self._matrix):
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[self._size] = vector
        self._size += 1
        self._ids.append(f"{row['seed_id']}/{row['sample_index']}")
        self.seconds += time.perf_counter() - start
        return None
