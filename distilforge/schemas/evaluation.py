"""`eval:`: what the student (and optionally the teacher) is scored on."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from distilforge.schemas.base import Strict
from distilforge.schemas.seeds import SeedFields


class EvalFile(Strict):
    path: str = Field(description="JSONL/JSON/CSV/Parquet file, save_to_disk folder or Hub dataset id")
    fields: SeedFields = Field(
        default=SeedFields(), description="which fields hold the question and the gold answer (as "
                                          "seeds.fields; answer is required)")
    limit: int | None = Field(
        default=None, ge=1, description="score only the first this many questions (the smaller of this and "
                                        "eval.limit)")
    name: str | None = Field(
        default=None, description="the set's name in results and eval/NAME.jsonl; default: the file's stem")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        # `eval.files: [data/test.jsonl]` is as good as `[{path: data/test.jsonl}]`.
        return {"path": value} if isinstance(value, str) else value


def _path_or_mapping(schema: dict[str, Any]) -> None:
    # The schema says what `_bare_path` accepts: a bare path string is an eval file too.
    schema["items"] = {"anyOf": [{"type": "string"}, schema["items"]]}


class EvalConfig(Strict):
    files: list[EvalFile] = Field(
        default_factory=list, description="eval sets with gold answers: a path, or {path, fields, limit, "
                                          "name}", json_schema_extra=_path_or_mapping)
    limit: int | None = Field(default=None, ge=1, description="cap per file")
    max_tokens: int = Field(
        default=256, ge=1, description="tokens per greedy answer (the teacher's eval gets at least this many)")
    batch_size: int = Field(default=16, ge=1, description="questions per generate() call for the student")
    include_validation: bool = Field(default=True, description="also score the dataset's validation split")
    teacher: bool = Field(default=False, description="also score the teacher, for the student/teacher ratio")
