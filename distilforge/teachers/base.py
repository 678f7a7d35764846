"""The one small async interface every teacher implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str | None  # "stop", "length", ...


@dataclass(slots=True)
class TeacherResponse:
    completions: list[Completion]
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass
class TeacherStats:
    attempts: int = 0  # HTTP calls / generate() calls, retries included
    retries: int = 0
    rate_limited: int = 0  # 429 answers seen
    server_errors: int = 0  # 5xx, malformed bodies, timeouts, dropped connections
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1


class TeacherError(RuntimeError):
    """A request that failed for good (after retries, or a non-retryable error)."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Teacher(abc.ABC):
    """Answers chat messages with `n` sampled completions and the tokens it used."""

    model: str
    max_concurrency: int
    stats: TeacherStats

    @abc.abstractmethod
    async def complete(self, messages: list[dict[str, str]], n: int = 1) -> TeacherResponse: ...

    async def start(self) -> None:  # noqa: B027 - optional hook, most teachers need it
        """Load weights / check the endpoint before the first request."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or models."""

    @property
    def max_samples_per_request(self) -> int:
        return 1 << 16
