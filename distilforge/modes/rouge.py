"""ROUGE-L novelty checks that stay fast as the instruction pool grows.

ROUGE-L F1 between token lists a and b is 2·LCS(a, b) / (|a| + |b|) (Self-Instruct's setting: the
rouge_score tokenizer, no stemmer). Checking a candidate against a pool of 10,000 instructions with a
plain dynamic program is ~10^7 steps in Python; two things avoid almost all of it:

1. An upper bound from an inverted index: LCS can never exceed the multiset overlap of the two token
   lists, and the overlaps with every pool item come out of one numpy pass over the postings of the
   candidate's tokens. Only items whose bound can beat the best score so far are checked exactly.
2. The exact LCS is bit-parallel (Hyyrö 2004): one big-int add, and, or per token of b.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter

import numpy as np

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        m = masks.get(token)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


class NoveltyPool:
    """Instructions seen so far, with `max_rouge_l(candidate)` over all of them."""

    def __init__(self) -> None:
        self.tokens: list[list[str]] = []
        self._lengths = array("i")
        self._postings: dict[str, tuple[array, array]] = {}  # token -> (item ids, counts in the item)
        self.exact_checks = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, text_or_tokens: str | list[str]) -> None:
        tokens = tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
        item = len(self.tokens)
        self.tokens.append(tokens)
        self._lengths.append(len(tokens))
        for token, count in Counter(tokens).items():
            ids, counts = self._postings.setdefault(token, (array("i"), array("i")))
            ids.append(item)
            counts.append(count)

    def max_rouge_l(self, text_or_tokens: str | list[str], stop_at: float | None = None) -> tuple[float, int]:
        """(best ROUGE-L F1, index of that item; -1 for an empty pool).

        With `stop_at`, returns as soon as a score at or above it is found (enough to reject).
        """
        tokens = tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
        if not self.tokens or not tokens:
            return 0.0, -1
        overlap = np.zeros(len(self.tokens), dtype=np.int32)
        for token, count in Counter(tokens).items():
            posting = self._postings.get(token)
            if posting is None:
                continue
            ids = np.frombuffer(posting[0], dtype=np.int32)
            counts = np.frombuffer(posting[1], dtype=np.int32)
            overlap[ids] += np.minimum(counts, count)  # ids are unique within one posting
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        bound = 2.0 * overlap / (len(tokens) + lengths)
        order = np.argsort(-bound, kind="stable")
        best, best_item = 0.0, -1
        for item in order:
            if bound[item] <= best or bound[item] == 0:
                break
            self.exact_checks += 1
            score = rouge_l(tokens, self.tokens[item])
            if score > best:
                best, best_item = score, int(item)
                if stop_at is not None and best >= stop_at:
                    break
        return best, best_item
