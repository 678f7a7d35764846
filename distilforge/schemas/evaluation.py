"""`eval:`: what the student (and optionally the teacher) is scored on; and the scores: one `EvalRow` per
question (a line of RUN/eval/LABEL.jsonl), one `EvalResult` per model (run.json's eval.before, after, teacher)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

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


class EvalRow(BaseModel):
    """One question's result: a line of RUN/eval/LABEL.jsonl (paired comparisons read them)."""

    set: str = Field(description="the eval set: a file's name, or validation")
    seed_id: str = Field(description="the question's seed id")
    gold: str | None = Field(description="the canonical gold answer")
    answer: str | None = Field(description="the answer parsed from the completion; null: none could be read")
    correct: bool = Field(description="graded against gold by the filters' rules")
    completion: str | None = Field(default=None, description="the model's whole answer (the student's eval)")


class EvalScore(BaseModel):
    """Accuracy over some questions, with its 95% interval."""

    n: int = Field(description="questions scored")
    correct: int = Field(description="answers graded correct")
    accuracy: float = Field(description="correct / n, rounded to 4 places (0 when n is 0)")
    ci95: list[float] = Field(description="bootstrap 95% interval (Wilson's at 0% and 100%)")
    parsed: int = Field(description="answers the grader could read at all")


class EvalResult(EvalScore):
    """One model scored on every eval set: run.json's eval.before, eval.after or eval.teacher."""

    model: str = Field(description="the model scored (the student's base, a folder, or the teacher)")
    adapter: str | None = Field(description="the LoRA adapter on it, if any")
    sets: dict[str, EvalScore] = Field(description="the same score per eval set")
    seconds: float = Field(description="time spent scoring")
    unanswered: int | None = Field(default=None, description="teacher: questions whose request failed or was "
                                                              "not sent (counted wrong); absent when none")
