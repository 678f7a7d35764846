"""Parse step: split each completion into rationale and canonical final answer."""

from __future__ import annotations

from distilforge.pipeline.answers import canonical, split_answer
from distilforge.pipeline.base import Map
from distilforge.schemas.records import Record


def parse_record(record: Record) -> Record:
    rationale, raw = split_answer(record.text)
    record.rationale = rationale
    record.meta["answer_raw"] = raw
    record.answer = canonical(raw, record.answer_type) if raw is not None else None
    return record


def ParseAnswer() -> Map:
    return Map("parse", parse_record)
