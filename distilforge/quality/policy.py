"""Per-seed decisions after the filters: self-consistency voting and the keep policy.

Generate emits all samples of a seed back to back, and the filters keep that order, so this step
sees each seed's surviving samples as one group and holds only that group in memory.
"""

from __future__ import annotations

from collections import Counter

from distilforge.core.grading import grade
from distilforge.pipeline.steps import GroupFilter
from distilforge.schemas import GenerationConfig
from distilforge.schemas.records import Record


def majority(records: list[Record]) -> tuple[str | None, float]:
    """The most common answer among records that stated one, and its share of those votes."""
    votes = Counter(r.answer for r in records if r.answer is not None)
    if not votes:
        return None, 0.0
    answer, count = votes.most_common(1)[0]
    return answer, count / sum(votes.values())


class SeedPolicy(GroupFilter):
    """Rejects minority answers (self-consistency) and samples beyond the keep policy."""

    name = "keep_policy"

    def __init__(self, generation: GenerationConfig):
        self.generation = generation

    def decide(self, group: list[Record]) -> list[tuple[Record, tuple[str, str] | None]]:
        g = self.generation
        out: list[tuple[Record, tuple[str, str] | None]] = []
        survivors = group
        if g.self_consistency and group and group[0].gold is None:
            answer, share = majority(group)
            survivors = []
            for r in group:
                r.vote_share = round(share, 4)
                if grade(r.meta.get("answer_raw", r.answer), answer, r.answer_type):
                    survivors.append(r)
                else:
                    out.append((r, ("minority", f"answered {r.answer}; the majority said {answer} ({share:.0%})")))
        limit = 1 if g.keep == "one" else g.max_per_seed
        seen_texts: set[str] = set()
        kept = 0
        for r in survivors:
            if g.keep == "distinct":
                norm = " ".join((r.rationale or r.text).lower().split())
                if norm in seen_texts:
                    out.append((r, (self.name, "same rationale as a kept sample (keep: distinct)")))
                    continue
                seen_texts.add(norm)
            if limit is not None and kept >= limit:
                out.append((r, (self.name, f"seed already has {limit} kept (keep: {g.keep})")))
                continue
            kept += 1
            out.append((r, None))
        return out
