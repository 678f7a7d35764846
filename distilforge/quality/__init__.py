"""Rationale-quality filters from the config's `filters:` list, run in order after the built-in checks.

Streaming filters see records as they come. Global ones (near-duplicate removal) need a stable order
to be reproducible, so they run as a second stage, once every rank is done: ordinary filters over the
kept records of all shards in `seed_id` order, so a resumed or sharded run keeps exactly the same set.
"""

from __future__ import annotations

from distilforge.pipeline.steps import Filter, PipelineStep
from distilforge.schemas import JobConfig

GLOBAL_FILTERS = ("minhash", "embedding_dedup")


def build_filters(config: JobConfig) -> tuple[list[PipelineStep], list[Filter]]:
    """(streaming filters, global filters), in the order the config lists them; names are unique."""
    stream: list[PipelineStep] = []
    final: list[Filter] = []
    seen: dict[str, int] = {}
    for spec in config.filters:
        step: Filter
        if spec.name == "length":
            from distilforge.quality.simple import LengthFilter

            step = LengthFilter(spec)
        elif spec.name == "consistency":
            from distilforge.quality.simple import ConsistencyFilter

            step = ConsistencyFilter()
        elif spec.name == "decontaminate":
            from distilforge.quality.decontaminate import Decontaminate

            step = Decontaminate(spec)
        elif spec.name == "judge":
            from distilforge.quality.judge import JudgeFilter

            step = JudgeFilter(spec)
        elif spec.name == "minhash":
            from distilforge.quality.dedup import MinhashDedup

            step = MinhashDedup(spec)
        else:
            from distilforge.quality.dedup import EmbeddingDedup

            step = EmbeddingDedup(spec)
        seen[step.name] = seen.get(step.name, 0) + 1
        if seen[step.name] > 1:  # a second judge keeps its own stats and journal identity
            step.name = f"{step.name}#{seen[step.name]}"
        (final if spec.name in GLOBAL_FILTERS else stream).append(step)
    return stream, final


__all__ = ["GLOBAL_FILTERS", "build_filters"]
