"""`loop:`: targeted rounds steered by the student's mistakes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilforge.schemas.base import Strict


class LoopConfig(Strict):
    """Targeted rounds: the student's mistakes on a held-out probe split steer new teacher data."""

    rounds: int = Field(default=0, ge=0, description="rounds after the first pass (0: one pass)")
    probe_fraction: float = Field(default=0.1, gt=0, lt=1, description="seeds held apart to find mistakes")
    per_round_usd: float | None = Field(default=None, gt=0, description="teacher spend allowed per round")
    neighbours: int = Field(default=4, ge=0, description="nearest seeds (MiniLM) of each failed probe question")
    samples: int = Field(default=2, ge=1, description="new samples per targeted seed")
    strategy: Literal["resample", "evolve"] = Field(
        default="resample", description="resample: more samples of the targeted seeds; evolve: harder "
                                        "variants of them")
    min_gain: float = Field(default=0.0, ge=-1, le=1, description="stop when probe accuracy gains no more than this "
                            "(below 0: go on through a round that lost accuracy)")
    probe_file: str | None = Field(default=None, description="held-out questions (the seeds' fields) to probe the "
                                   "student with, when it trained on every seed (`improve --probe FILE`)")
