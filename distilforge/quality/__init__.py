"""Rationale-quality filters from the config's `filters:` list, run in order after the built-in checks.

Streaming filters see records as they come. Global ones (near-duplicate removal) need a stable order
to be reproducible, so they run once the stream is done, over the kept records in `seed_id` order:
a resumed or sharded run then keeps exactly the same set.
"""

from __future__ import annotations

import abc
from typing import Any

from distilforge.core.config import JobConfig
from distilforge.core.steps import Filter, PipelineStep


class GlobalFilter(abc.ABC):
    """Sees every kept row once, in seed_id order; `check_row` returns a reject detail or None."""

    name: str

    def __init__(self) -> None:
        self.n_in = 0
        self.n_out = 0
        self.seconds = 0.0
        self.examples: list[dict[str, Any]] = []

    @abc.abstractmethod
    def check_row(self, row: dict[str, Any]) -> str | None: ...

    def reject(self, row: dict[str, Any], detail: str) -> None:
        """Tag a rejected row and keep a few examples for the report (as `Filter.reject` does)."""
        row["reject_reason"], row["reject_detail"] = self.name, detail
        if len(self.examples) < 3:
            self.examples.append({"seed_id": row["seed_id"], "reason": self.name, "detail": detail,
                                  "text": (row.get("text") or "")[:300]})

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.n_in, "out": self.n_out, "seconds": round(self.seconds, 4),
                "examples": self.examples}


def build_filters(config: JobConfig) -> tuple[list[PipelineStep], list[GlobalFilter]]:
    stream: list[PipelineStep] = []
    final: list[GlobalFilter] = []
    for spec in config.filters:
        if spec.name == "length":
            from distilforge.quality.simple import LengthFilter

            stream.append(LengthFilter(spec))
        elif spec.name == "consistency":
            from distilforge.quality.simple import ConsistencyFilter

            stream.append(ConsistencyFilter())
        elif spec.name == "decontaminate":
            from distilforge.quality.decontaminate import Decontaminate

            stream.append(Decontaminate(spec))
        elif spec.name == "judge":
            from distilforge.quality.judge import JudgeFilter

            stream.append(JudgeFilter(spec))
        elif spec.name == "minhash":
            from distilforge.quality.dedup import MinhashDedup

            final.append(MinhashDedup(spec))
        elif spec.name == "embedding_dedup":
            from distilforge.quality.dedup import EmbeddingDedup

            final.append(EmbeddingDedup(spec))
    return stream, final


__all__ = ["Filter", "GlobalFilter", "build_filters"]
