"""Request bodies: parsed off the event loop, within a node budget and a depth limit.

YAML aliases let a few hundred bytes stand for billions of nodes (the "billion laughs"): PyYAML
shares the aliased objects, so parsing is cheap, but anything that walks the result afterwards
(validation, a JSON dump, a database write) expands it. So the composed document's *expanded* size
is computed first, from the node graph with memoisation (each distinct node once), and parsing stops
as soon as it passes the budget. A recursive alias is refused. JSON has no aliases, but gets the same
node and depth limits after parsing.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

MAX_DEPTH = 32


class BodyError(ValueError):
    """A body that cannot be taken: `loc` is "(body)" or a dotted path; the message never echoes it."""

    def __init__(self, msg: str, loc: str = "(body)"):
        super().__init__(msg)
        self.loc, self.msg = loc, msg


class _BudgetLoader(yaml.SafeLoader):
    """A SafeLoader that counts composed nodes (aliases included) and stops past the budget."""

    budget = 10_000

    def __init__(self, stream: str):
        super().__init__(stream)
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > self.budget:
            raise BodyError(f"the document has more than {self.budget} nodes")
        return super().compose_node(parent, index)


def _expanded_size(root: yaml.Node, budget: int) -> int:
    """How many nodes the document has with every alias expanded; stops past `budget`."""
    memo: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in on_path:
            raise BodyError("a recursive alias (a node that contains itself) is not allowed")
        if depth > MAX_DEPTH:
            raise BodyError(f"the document is nested deeper than {MAX_DEPTH} levels")
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > budget:
                raise BodyError(f"the document expands to more than {budget} nodes (YAML aliases count "
                                "once per use)")
        on_path.discard(key)
        memo[key] = total
        return total

    return size(root, 0)


def _count_plain(data: Any, budget: int) -> None:
    """Nodes and depth of plain parsed data (JSON), iteratively."""
    stack = [(data, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > budget:
            raise BodyError(f"the document has more than {budget} nodes")
        if depth > MAX_DEPTH:
            raise BodyError(f"the document is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load_yaml(text: str, budget: int) -> Any:
    loader_cls = type("BudgetLoader", (_BudgetLoader,), {"budget": budget})
    loader = loader_cls(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root, budget)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def parse_body(body: bytes, content_type: str, budget: int) -> Any:
    """A request body (YAML if the content type says so, else JSON) as plain data, or BodyError."""
    is_yaml = "yaml" in (content_type or "").lower()
    kind = "YAML" if is_yaml else "JSON"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body is not UTF-8 text") from None
    try:
        if is_yaml:
            data = load_yaml(text, budget)
        else:
            data = json.loads(text) if text.strip() else {}
            _count_plain(data, budget)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(f"the document is nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise BodyError(f"not valid YAML{where}: {str(problem)[:200]}") from None
    except ValueError as exc:
        raise BodyError(f"not valid {kind}: {type(exc).__name__}") from None
    return data


def find_nul(data: Any, prefix: str = "") -> str | None:
    """The dotted path of the first key or string that holds a NUL byte, or None."""
    stack: list[tuple[str, Any]] = [(prefix, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return where or "(body)"
        elif isinstance(value, dict):
            for k, v in value.items():
                name = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and "\x00" in k:
                    return (where or "(body)")
                stack.append((name, v))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(value))
    return None


# -- the API's bodies -------------------------------------------------------------------------------------


class JobOut(BaseModel):
    """A job as the API shows it (`GET /v1/jobs/{id}` and the list)."""

    id: str = Field(description="The job's id.")
    state: str = Field(description="queued, running, succeeded, failed or cancelled.")
    owner: str = Field(description="The owner whose token submitted it.")
    stage: str | None = Field(None, description="generate, train or eval while running; else null.")
    progress: dict[str, Any] | None = Field(None, description="The running job's progress (samples done and total).")
    kept: int | None = Field(None, description="Records kept in dataset/ once finished.")
    rejected: dict[str, int] | None = Field(None, description="Rejected records by reason.")
    tokens: dict[str, int] | None = Field(None, description="The run folder's tokens: prompt, completion, reasoning, "
                                          "cached_prompt.")
    cost_usd: float | None = Field(None, description="The run folder's teacher spend in USD.")
    stopped: str | None = Field(None, description="Why it stopped early (budget, cancelled, ...), if it did.")
    error: str | None = Field(None, description="The error of a failed job, secrets redacted.")
    attempts: int = Field(0, description="How many times a worker claimed it (a lost lease is retried).")
    created: datetime = Field(description="When it was submitted.")
    updated: datetime = Field(description="When its state last changed.")
    schedule_id: str | None = Field(None, description="The schedule that fired it, if any.")


class ScheduleIn(BaseModel):
    """`POST /v1/schedules`: a job config fired on a cron expression."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(max_length=128, description="Five-field cron expression.")
    timezone: str = Field(default="UTC", max_length=64, description="IANA time zone the cron expression reads in.")
    config: dict[str, Any] = Field(description="The job config submitted at every fire (validated at each).")
    monthly_cap_usd: float | None = Field(default=None, gt=0, description="This schedule's monthly spend cap in USD, "
                                          "within the server's caps.")
