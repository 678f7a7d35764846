"""`seeds:`: the question file and the fields read from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilforge.schemas.base import Strict


class SeedFields(Strict):
    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    input: str | None = Field(default=None, description="instruction modes: the optional input field")


class SeedsConfig(Strict):
    path: str = Field(description="JSONL/JSON/CSV/Parquet file, a save_to_disk folder, or a Hub dataset id")
    format: Literal["auto", "fields", "openai-chat"] = Field(
        default="auto", description="fields: rows with the fields below; openai-chat: OpenAI chat JSONL "
                                    "(`messages`, optional `metadata`); auto: openai-chat when the first row has "
                                    "a `messages` list and no question field, else fields")
    fields: SeedFields = SeedFields()
    limit: int | None = Field(default=None, ge=1)
    split: str = "train"
    subset: str | None = None
    license: str | None = Field(default=None, description="the seeds' license, for the dataset card")
    on_bad_line: Literal["stop", "skip"] = Field(
        default="stop", description="stop: a bad row stops the run before anything is sent; skip: it is left "
                                    "out and written with its reason to RUN/rejected_seeds.jsonl")
