"""Structured answers a teacher is asked for: the judge's verdict and a Self-Instruct task."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator


class Verdict(BaseModel):
    correctness: int = Field(ge=1, le=5)
    relevance: int = Field(ge=1, le=5)
    clarity: int = Field(ge=1, le=5)
    reason: str = ""

    @property
    def score(self) -> float:
        return (self.correctness + self.relevance + self.clarity) / 3


class Task(BaseModel):
    instruction: str = Field(min_length=1)
    input: str = ""
    output: str = Field(min_length=1)

    @field_validator("input", mode="before")
    @classmethod
    def _no_input(cls, v: Any) -> str:
        return "" if v is None or str(v).strip() in ("<noinput>", "<no input>", "none", "") else str(v)
