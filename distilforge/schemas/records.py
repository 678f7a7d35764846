"""Records that stream through the pipeline.

Internal records are dataclasses with slots rather than pydantic models: tens of thousands flow per
run and they are built by our own code, so validation happens at the boundaries (seed files, config,
teacher responses) instead of on every hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Seed:
    seed_id: str
    question: str
    gold: str | None  # canonical gold answer ("18", "yes"), None when the seeds carry no answer
    answer_type: str  # number | yes_no | text
    source: str  # "file:line", for error messages and provenance


@dataclass(slots=True)
class Record:
    """One teacher sample for one seed, from request to kept/rejected."""

    seed_id: str
    sample_index: int
    question: str
    gold: str | None
    answer_type: str
    prompt: list[dict[str, str]]  # the messages sent to the teacher
    teacher_model: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rationale: str = ""
    answer: str | None = None
    reject_reason: str | None = None
    reject_detail: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        """The student's view: the prompt's user turn and the teacher's full answer."""
        user = [m for m in self.prompt if m["role"] != "system"]
        return [*user, {"role": "assistant", "content": self.text.strip()}]

    def to_row(self) -> dict[str, Any]:
        # Shallow on purpose (asdict deep-copies the prompt): rows are serialized straight away.
        row = {name: getattr(self, name) for name in self.__slots__ if name != "meta"}  # type: ignore[attr-defined]
        row["messages"] = self.messages()
        row["prompt_template"] = self.meta.get("prompt_template")
        row["prompt_hash"] = self.meta.get("prompt_hash")
        return row
