"""Structured teacher output: a JSON schema for servers that enforce it, repair for those that don't.

OpenAI and vLLM take `response_format: {"type": "json_schema", ...}` (vLLM enforces it with guided
decoding). A local model does not, so its text is repaired before validation: code fences stripped,
the outermost {...} taken, trailing commas dropped. What still does not validate is rejected with
the pydantic error as its reason.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def response_format(model: type[BaseModel], name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema(), "strict": True}}


def repair_json(text: str) -> str:
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip(), flags=re.M)
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        text = text[start : end + 1]
    return re.sub(r",\s*([}\]])", r"\1", text)


def parse_model(text: str, model: type[M]) -> tuple[M | None, str | None]:
    """(value, None) or (None, why it failed)."""
    for candidate in (text, repair_json(text)):
        try:
            return model.model_validate(json.loads(candidate)), None
        except json.JSONDecodeError as exc:
            error = f"invalid JSON: {exc.msg}"
        except ValidationError as exc:
            first = exc.errors()[0]
            error = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return None, error
