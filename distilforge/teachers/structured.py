"""Structured teacher output: a JSON schema for servers that enforce it, repair for those that don't.

OpenAI and vLLM take `response_format: {"type": "json_schema", ...}` (vLLM enforces it with guided
decoding); the OpenAI teacher falls back per endpoint to JSON mode or plain text where a server
refuses it. Whatever comes back is parsed strictly first, then repaired with json-repair (code
fences, prose around the object, trailing commas, unclosed braces) and validated; what still does not
validate is reported with the pydantic error as its reason.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from distilforge.schemas import TeacherConfig

M = TypeVar("M", bound=BaseModel)


def response_format(model: type[BaseModel], name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema(), "strict": True}}


def with_schema(teacher: TeacherConfig, model: type[BaseModel], name: str) -> TeacherConfig:
    """A teacher config that asks servers speaking the OpenAI API for `model`'s JSON schema (negotiated
    per endpoint); in-process teachers' replies are repaired and validated instead."""
    if teacher.backend in ("openai", "vllm") and teacher.params.response_format is None:
        teacher = teacher.model_copy(deep=True)
        teacher.params.response_format = response_format(model, name)
    return teacher


def parse_model(text: str, model: type[M]) -> tuple[M | None, str | None]:
    """(value, None) or (None, why it failed)."""
    import json_repair

    error = "no JSON object in the reply"
    for parse in (json.loads, json_repair.loads):
        try:
            data = parse(text)
        except (json.JSONDecodeError, ValueError) as exc:
            error = f"invalid JSON: {getattr(exc, 'msg', exc)}"
            continue
        if not isinstance(data, dict):
            continue
        try:
            return model.model_validate(data), None
        except ValidationError as exc:
            first = exc.errors()[0]
            error = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return None, error
