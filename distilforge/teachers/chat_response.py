"""A chat completion's body, plain or streamed, read into a `TeacherResponse`.

One reader for every path that gets a chat completion back (a plain JSON body, a server-sent event
stream, a Batch API output row), so each reads the trace, the final answer and the usage details the
same way (`core.reasoning`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distilforge.core import fastjson
from distilforge.core.reasoning import split_reasoning, usage_details
from distilforge.schemas.records import Completion, TeacherResponse


def completion_of(message: dict[str, Any], finish_reason: str | None, opened: bool = False) -> Completion:
    """One choice: the final answer, and the trace from whichever shape the server used (`opened`: the
    chat template opens the thinking, `teacher.opens_thinking`)."""
    field_trace = message.get("reasoning_content")
    if field_trace is None:
        field_trace = message.get("reasoning")
    text, trace = split_reasoning(message.get("content"), field_trace if isinstance(field_trace, str) else None,
                                  opened=opened)
    return Completion(text, finish_reason, trace)


def response_from_body(data: dict[str, Any], model: str, opened: bool = False) -> TeacherResponse:
    """A chat.completion object (raises ValueError/KeyError/TypeError when it is not one)."""
    completions = [completion_of(c.get("message") or {}, c.get("finish_reason"), opened)
                   for c in sorted(data["choices"], key=lambda c: c.get("index", 0))]
    if not completions:
        raise ValueError("response has no choices")
    usage = data.get("usage")
    served = data.get("model") or model
    if not isinstance(usage, dict) or "prompt_tokens" not in usage:
        return TeacherResponse(completions, 0, 0, served, usage_reported=False)
    reasoning, cached = usage_details(usage)
    return TeacherResponse(completions, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                           served, reasoning_tokens=reasoning, cached_tokens=cached)


@dataclass
class StreamAssembler:
    """Builds the chat.completion object from `chat.completion.chunk` events, choice by choice."""

    model: str
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    served: str | None = None
    done: bool = False

    def feed_line(self, line: bytes) -> None:
        """One line of the event stream (`data: {...}`, `data: [DONE]`, comments and blanks)."""
        text = line.decode("utf-8").strip()
        if not text.startswith("data:"):
            return
        payload = text[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return
        chunk = fastjson.loads(payload)
        if isinstance(chunk.get("error"), dict):
            raise ValueError(f"stream error: {chunk['error'].get('message')}")
        self.served = self.served or chunk.get("model")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            mine = self.choices.setdefault(int(choice.get("index", 0)), {"parts": {}, "finish_reason": None})
            for name, value in (choice.get("delta") or {}).items():
                if name in ("content", "reasoning_content", "reasoning") and isinstance(value, str):
                    mine["parts"].setdefault(name, []).append(value)
            if choice.get("finish_reason"):
                mine["finish_reason"] = choice["finish_reason"]

    def body(self) -> dict[str, Any]:
        choices = []
        for index, mine in sorted(self.choices.items()):
            message = {name: "".join(parts) for name, parts in mine["parts"].items()}
            choices.append({"index": index, "message": message, "finish_reason": mine["finish_reason"]})
        data: dict[str, Any] = {"choices": choices, "model": self.served or self.model}
        if self.usage is not None:
            data["usage"] = self.usage
        return data
