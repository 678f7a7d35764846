"""Records that stream through the pipeline.

Internal records are dataclasses with slots rather than pydantic models: tens of thousands flow per
run and they are built by our own code, so validation happens at the boundaries (seed files, config,
teacher responses) instead of on every hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class Completion:
    """One choice of a teacher answer."""

    text: str  # the final answer (a reasoning model's trace is taken out into `reasoning`)
    finish_reason: str | None  # "stop", "length", ...
    reasoning: str | None = None  # the thinking, whitespace kept; None when the server sent none
    reasoning_tokens: int = 0  # this choice's share of usage.completion_tokens_details.reasoning_tokens


@dataclass(slots=True)
class TeacherResponse:
    """A teacher's answer to one request: n completions and the usage the server reported."""

    completions: list[Completion]
    prompt_tokens: int
    completion_tokens: int
    model: str
    usage_reported: bool = True  # False when the server sent no usage (the cost is then unknown)
    reasoning_tokens: int = 0  # part of completion_tokens (billed as output)
    cached_tokens: int = 0  # part of prompt_tokens, billed at the cached-input price


@dataclass(slots=True)
class Seed:
    seed_id: str
    question: str
    gold: str | None  # canonical gold answer ("18", "yes"), None when the seeds carry no answer
    answer_type: str  # number | yes_no | choice | text
    source: str  # "file:line", for error messages and provenance
    input: str | None = None  # instruction modes: the task's input
    messages: list[dict[str, str]] | None = None  # prebuilt teacher prompt (generated seeds)
    meta: dict[str, Any] = field(default_factory=dict)  # parent_id, demo ids, ...
    # openai-chat seeds: the conversation before the question (system turns, earlier user/assistant
    # turns), kept in front of the question in the teacher's and the student's prompt
    context: list[dict[str, str]] | None = None


@dataclass(slots=True, frozen=True)
class Missing:
    """A seed's sample that ends in failed.jsonl rather than the dataset: sent and failed for good
    (`detail` is the error), or never sent because the run stopped (`detail` is the stop reason)."""

    seed_id: str
    sample_index: int
    reason: Literal["failed", "not_sent"]
    detail: str

    @classmethod
    def not_sent(cls, seed_id: str, sample_index: int, stopped: str | None) -> Missing:
        # A sampler that ran out of budget stops only itself: the rank has no stop reason then.
        return cls(seed_id, sample_index, "not_sent", stopped or "budget")

    @property
    def error(self) -> str:
        """The text users read in failed.jsonl (unchanged since it was the record itself)."""
        return f"not sent (stopped: {self.detail})" if self.reason == "not_sent" else self.detail

    def row(self) -> dict[str, Any]:
        return {"seed_id": self.seed_id, "sample_index": self.sample_index, "error": self.error}


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
    reasoning: str | None = None  # the teacher's thinking (whitespace kept), None when there was none
    reasoning_tokens: int = 0
    rationale: str = ""
    answer: str | None = None
    reject_reason: str | None = None
    reject_detail: str | None = None
    mode: str = "cot"
    template: str | None = None
    template_sha: str | None = None
    demo_ids: list[str] | None = None  # ICL
    vote_share: float | None = None  # CoT self-consistency
    instruction: str | None = None  # instruction modes
    input: str | None = None
    output: str | None = None
    parent_id: str | None = None
    rouge_l_max: float | None = None
    judge_score: float | None = None
    judge_scores: str | None = None  # the judge's JSON verdict
    round: int = 0  # which targeted round produced it (0: the first pass)
    student_prompt: list[dict[str, str]] | None = None  # what the student sees; default: the prompt
    assistant: str | None = None  # the student's answer turn when shaped (train.format thinking); default: text
    meta: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        """The student's view: its prompt (the teacher's, unless the mode says otherwise) and the answer."""
        user = self.student_prompt or [m for m in self.prompt if m["role"] != "system"]
        answer = self.assistant if self.assistant is not None else (
            self.output if self.output is not None else self.text.strip())
        return [*user, {"role": "assistant", "content": answer}]

    def to_row(self) -> dict[str, Any]:
        # Shallow on purpose (asdict deep-copies the prompt): rows are serialized straight away.
        row = {name: getattr(self, name) for name in self.__slots__
               if name not in ("meta", "student_prompt", "assistant")}  # type: ignore[attr-defined]
        row["messages"] = self.messages()
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """A stored row back as a Record (the second stage filters kept rows); `to_row` gives it back."""
        names = set(cls.__slots__) - {"meta", "student_prompt", "prompt", "assistant"}  # type: ignore[attr-defined]
        record = cls(**{k: v for k, v in row.items() if k in names}, prompt=[])  # type: ignore[arg-type]
        messages = row.get("messages") or []
        record.student_prompt = messages[:-1]
        if messages:  # the answer turn as it was shaped (a think block stays a think block)
            record.assistant = messages[-1]["content"]
        return record
