"""Parse step: each mode reads its answers (rationale + final answer, or an instruction's output)."""

from __future__ import annotations

from distilforge.modes import parse_record
from distilforge.pipeline.base import Map


def ParseAnswer() -> Map:
    return Map("parse", parse_record)
