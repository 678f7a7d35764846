"""`seeds:`: the question file and the fields read from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilforge.schemas.base import Strict


class SeedFields(Strict):
    question: str = Field(default="question", description="the field holding the question (or instruction)")
    answer: str | None = Field(
        default="answer", description="the field holding the gold answer; null: the seeds carry none (no "
                                      "grading against gold)")
    id: str | None = Field(
        default=None, description="the field holding a unique seed id; default: `id` when present (openai-"
                                  "chat metadata), else the row's position")
    input: str | None = Field(default=None, description="instruction modes: the optional input field")


class SeedsConfig(Strict):
    path: str = Field(description="JSONL/JSON/CSV/Parquet file, a save_to_disk folder, or a Hub dataset id")
    format: Literal["auto", "fields", "openai-chat"] = Field(
        default="auto", description="fields: rows with the fields below; openai-chat: OpenAI chat JSONL "
                                    "(`messages`, optional `metadata`); auto: openai-chat when the first row has "
                                    "a `messages` list and no question field, else fields")
    fields: SeedFields = Field(
        default=SeedFields(), description="which row fields hold the question, the gold answer, the id and "
                                          "the input (format fields)")
    limit: int | None = Field(default=None, ge=1, description="read only the first this many seeds")
    split: str = Field(default="train", description="the split read from a Hub dataset or a save_to_disk DatasetDict")
    subset: str | None = Field(default=None, description="the Hub dataset's configuration (subset) name")
    license: str | None = Field(default=None, description="the seeds' license, for the dataset card")
    on_bad_line: Literal["stop", "skip"] = Field(
        default="stop", description="stop: a bad row stops the run before anything is sent; skip: it is left "
                                    "out and written with its reason to RUN/rejected_seeds.jsonl")
