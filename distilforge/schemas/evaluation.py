"""`eval:`: what the student (and optionally the teacher) is scored on."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from distilforge.schemas.base import Strict
from distilforge.schemas.seeds import SeedFields


class EvalFile(Strict):
    path: str
    fields: SeedFields = SeedFields()
    limit: int | None = Field(default=None, ge=1)
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        # `eval.files: [data/test.jsonl]` is as good as `[{path: data/test.jsonl}]`.
        return {"path": value} if isinstance(value, str) else value


class EvalConfig(Strict):
    files: list[EvalFile] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1, description="cap per file")
    max_tokens: int = Field(default=256, ge=1)
    batch_size: int = Field(default=16, ge=1)
    include_validation: bool = Field(default=True, description="also score the dataset's validation split")
    teacher: bool = Field(default=False, description="also score the teacher, for the student/teacher ratio")
