"""The one small async interface every teacher implements: one attempt at a request.

Retries, budget and journal live in the `Sampler`, which needs to know after every attempt whether
the server may have billed it: so a teacher makes exactly one attempt per call and, when it fails,
says how (`AttemptFailed`: its kind, whether a retry can help, Retry-After, whether it may have been
billed).
"""

from __future__ import annotations

import abc

from distilforge.schemas.records import Completion, TeacherResponse

__all__ = ["AttemptFailed", "Completion", "Teacher", "TeacherError", "TeacherResponse"]


class TeacherError(RuntimeError):
    """A teacher that cannot be used at all (missing key, unreachable or wrong server): bad input."""


class AttemptFailed(Exception):
    """One attempt failed.

    kind: "429", "500", ..., "timeout", "connect" (never reached the server), "connection" (dropped
    after sending), "malformed" (a 200 whose body could not be read), "engine" (a local model).
    maybe_billed: the server may have billed it (sent, outcome unknown), so it is charged at worst case.
    """

    def __init__(self, kind: str, message: str, *, retryable: bool, maybe_billed: bool = False,
                 retry_after: float | None = None):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.retryable = retryable
        self.maybe_billed = maybe_billed
        self.retry_after = retry_after


class Teacher(abc.ABC):
    """Answers chat messages with `n` sampled completions and the tokens it used."""

    model: str
    max_concurrency: int

    @abc.abstractmethod
    async def attempt(self, messages: list[dict[str, str]], n: int = 1) -> TeacherResponse:
        """One try; raises AttemptFailed."""

    async def start(self) -> None:  # noqa: B027 - optional hook, most teachers need it
        """Load weights / check the endpoint before the first request."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or models."""

    @property
    def served_model(self) -> str:
        """The model id to record in datasets and cards (an alias or the server's id, never a path)."""
        return self.model
