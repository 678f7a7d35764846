"""`filters:` (run in order after the built-in checks) and `thinking:` (checks on a reasoning trace)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from distilforge.schemas.base import Strict
from distilforge.schemas.budget import Prices
from distilforge.schemas.teacher import TeacherConfig


class LengthFilterSpec(Strict):
    name: Literal["length"] = Field(
        description="drop rationales too short, too long or out of proportion to the question")
    min_words: int = Field(default=5, ge=0, description="shorter is not a rationale")
    max_words: int = Field(default=1500, ge=1, description="longer is rambling")
    max_ratio: float | None = Field(default=None, gt=0, description="rationale words / question words")


class ConsistencyFilterSpec(Strict):
    name: Literal["consistency"] = Field(
        description="number answers: drop records whose rationale's last number is not the stated answer")


class JudgeFilterSpec(Strict):
    name: Literal["judge"] = Field(
        description="an LLM judge scores each record against the rubric (paid, through its own teacher)")
    teacher: TeacherConfig = Field(description="the judge model (same keys as `teacher:`)")
    prices: Prices | None = Field(default=None, description="the judge model's prices (default: the built-in table)")
    min_score: float = Field(default=4.0, ge=1, le=5, description="records scored below this (1-5) are rejected")
    rubric: str = Field(
        default="correctness of each step, relevance to the question, clarity",
        description="what the judge scores")
    batch: int = Field(default=64, ge=1, description="records judged together (memory bound)")


class MinhashFilterSpec(Strict):
    name: Literal["minhash"] = Field(description="global: drop near-duplicates by MinHash LSH")
    threshold: float = Field(
        default=0.8, gt=0, le=1, description="estimated Jaccard similarity above which a record is a "
                                             "duplicate")
    num_perm: int = Field(default=128, ge=16, description="MinHash permutations")
    shingle: int = Field(default=3, ge=1, description="word n-grams")


class EmbeddingDedupSpec(Strict):
    name: Literal["embedding_dedup"] = Field(description="global: drop near-duplicates by MiniLM embedding")
    threshold: float = Field(
        default=0.95, gt=0, le=1, description="cosine similarity at or above which a record is a duplicate")


class DecontaminateSpec(Strict):
    name: Literal["decontaminate"] = Field(description="drop records that hold most of an eval question's n-grams")
    eval_sets: list[str] = Field(min_length=1, description="files or Hub dataset ids")
    ngram: int = Field(default=13, ge=3, description="words per n-gram")
    fields: list[str] = Field(default_factory=lambda: ["question"], description="eval-set fields to index")
    split: str = Field(default="test", description="the split read from Hub eval sets")
    min_overlap: float = Field(
        default=0.5, gt=0, le=1, description="a record is dropped when it holds this share of some eval question's "
        "own n-grams (1.0: only whole copies)")
    common_in: int | None = Field(
        default=3, ge=2, description="an n-gram found in this many eval questions or more is the set's template "
        "(instructions, option lists), not any question's own; null: every n-gram is a question's own")


FilterSpec = Annotated[
    LengthFilterSpec | ConsistencyFilterSpec | JudgeFilterSpec | MinhashFilterSpec | EmbeddingDedupSpec
    | DecontaminateSpec,
    Field(discriminator="name"),
]


class ThinkingConfig(Strict):
    """Checks on a reasoning teacher's trace (records without one pass them). The defaults keep any
    finished, well-formed trace, however short; each check has its own reject reason."""

    min_tokens: int = Field(default=0, ge=0, description="thinking_length: fewer trace tokens are rejected")
    max_tokens: int | None = Field(default=None, ge=1, description="thinking_length: more trace tokens are rejected")
    loop_ngram: int = Field(default=8, ge=2, description="thinking_loop: words per repeated n-gram")
    loop_repeats: int | None = Field(default=10, ge=2, description="thinking_loop: an n-gram seen this often "
                                                                    "(and covering loop_share of the trace); null: off")
    loop_share: float = Field(
        default=0.3, gt=0, le=1, description="thinking_loop: the share of the trace the repeated n-grams must"
                                             " cover")
    other_script_share: float | None = Field(
        default=0.3, gt=0, le=1, description="language_mixing: letters in a script other than the question's, "
                                             "above this share of the trace's (and 50 letters); null: off")
    answer_supported: bool = Field(default=True, description="answer_not_in_thinking: the trace's last stated "
                                                             "answer must agree with the final one (when both parse)")
