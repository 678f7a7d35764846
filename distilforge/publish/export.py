"""Export a run's kept data for fine-tuning elsewhere: OpenAI chat fine-tuning JSONL.

`RUN_DIR/dataset` (train and validation) -> `DIR/train.jsonl` and `DIR/validation.jsonl`, one
`{"messages": [...]}` per line: the conversation the student is trained on. Every line is checked
against the format's rules first (roles, a final assistant turn, non-empty string content, no keys
but `role` and `content`, an approximate token limit); a row that breaks one is not written, and is
counted and named. Files are written beside their target and renamed into place, so a reader never
sees half a file, and a folder never mixes two exports.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilforge.core.reasoning import parse_think_turn, think_turn

FORMATS = ("openai-chat",)
SPLITS = ("train", "validation")
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 65_536  # OpenAI's per-example limit for its current fine-tunable models
MESSAGE_OVERHEAD_TOKENS = 3  # what a chat template adds per message, roughly
SHOWN_PROBLEMS = 5
OPENAI_MIN_EXAMPLES = 10  # OpenAI refuses a fine-tuning file with fewer examples


class ExportError(ValueError):
    """Export cannot start: no dataset in the run folder, an unknown format, a bad limit."""


@dataclass
class ExportResult:
    output: Path
    written: dict[str, int] = field(default_factory=dict)  # split -> lines written
    files: list[Path] = field(default_factory=list)
    invalid: int = 0  # rows not written
    problems: list[str] = field(default_factory=list)  # the first few, one line each
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.written.values())


def approx_tokens(messages: list[dict[str, Any]]) -> int:
    """A tokenizer-free estimate: a token per 4 characters of content, plus a few per message."""
    return sum(MESSAGE_OVERHEAD_TOKENS + math.ceil(len(m.get("content") or "") / 4) for m in messages)


def check_messages(messages: Any, max_tokens: int = DEFAULT_MAX_TOKENS) -> str | None:
    """What is wrong with one fine-tuning example under the openai-chat rules, or None."""
    if not isinstance(messages, list) or not messages:
        return "messages: expected a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}]: expected an object"
        # Arrow gives every struct the union of the keys; an absent one reads as None.
        extra = sorted(k for k, v in message.items() if k not in ("role", "content") and v is not None)
        if extra:
            return f"messages[{i}]: unknown key {extra[0]!r}"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"messages[{i}]: role {role!r} is not one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return f"messages[{i}]: content is {type(content).__name__}, not a string"
        if not content.strip():
            return f"messages[{i}]: empty {role} content"
    if messages[-1]["role"] != "assistant":
        return f"messages[{len(messages) - 1}]: the last turn is {messages[-1]['role']}, not assistant"
    if not any(m["role"] == "user" for m in messages):
        return "messages: no user turn"
    tokens = approx_tokens(messages)
    if tokens > max_tokens:
        return f"about {tokens:,} tokens, over the limit of {max_tokens:,} (--max-tokens)"
    return None


def _example(messages: list[dict[str, Any]], seed_id: str | None) -> dict[str, Any]:
    # metadata.id is the seed id, so a re-import (seeds.format: openai-chat) gives the same seeds.
    line: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    if seed_id is not None:
        line["metadata"] = {"id": seed_id}
    return line


def answer_turn(messages: list[dict[str, Any]], reasoning: str | None, include: bool) -> list[dict[str, Any]]:
    """The final answer alone, or (`include`) one think block with the trace, then the answer."""
    if not messages or not isinstance(messages[-1].get("content"), str):
        return messages
    trace, answer = parse_think_turn(messages[-1]["content"])
    trace = trace or reasoning
    content = think_turn(trace, answer) if include and trace and trace.strip() else answer
    return [*messages[:-1], {**messages[-1], "content": content}]


def export_run(run_dir: Path, fmt: str = "openai-chat", output: Path | None = None,
               max_tokens: int = DEFAULT_MAX_TOKENS, *, include_reasoning: bool = False) -> ExportResult:
    """Write `output` (default RUN_DIR/export/FORMAT)/{train,validation}.jsonl from RUN_DIR/dataset.

    A split with no valid row gets no file (an empty file is refused by fine-tuning uploads). When no
    row at all is valid nothing is written or removed, and the result's `total` is 0.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown export format (known: {', '.join(FORMATS)})")
    if max_tokens < 1:
        raise ExportError(f"--max-tokens {max_tokens}: must be at least 1")
    source = run_dir / "dataset"
    if not (source / "dataset_dict.json").exists():
        raise ExportError(f"{run_dir}: no dataset to export (run `distilforge generate` first)")
    import datasets

    splits = datasets.load_from_disk(str(source))
    out = output or run_dir / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    result = ExportResult(output=out)
    temps: dict[str, Path] = {}
    try:
        for split in SPLITS:
            if split not in splits or "messages" not in splits[split].column_names:
                continue
            ds = splits[split]
            columns = ["messages"] + [c for c in ("seed_id", "reasoning") if c in ds.column_names]
            tmp = out / f".{split}.jsonl.tmp-{os.getpid()}"
            temps[split] = tmp
            written, index = 0, 0
            with tmp.open("w", encoding="utf-8") as fh:
                for batch in ds.select_columns(columns).iter(batch_size=512):
                    for j, messages in enumerate(batch["messages"]):
                        trace = batch["reasoning"][j] if "reasoning" in batch else None
                        messages = answer_turn(messages, trace, include_reasoning)
                        problem = check_messages(messages, max_tokens)
                        if problem is None:
                            seed_id = batch["seed_id"][j] if "seed_id" in batch else None
                            fh.write(json.dumps(_example(messages, seed_id), ensure_ascii=False) + "\n")
                            written += 1
                        else:
                            result.invalid += 1
                            if len(result.problems) < SHOWN_PROBLEMS:
                                seed = f" (seed {batch['seed_id'][j]})" if "seed_id" in batch else ""
                                result.problems.append(f"{split} row {index}{seed}: {problem}")
                        index += 1
            result.written[split] = written
        for split, n in result.written.items():
            if 0 < n < OPENAI_MIN_EXAMPLES:
                result.warnings.append(f"{split}.jsonl has {n} example{'s' if n > 1 else ''}; OpenAI fine-tuning "
                                       f"needs at least {OPENAI_MIN_EXAMPLES} per file")
        if result.total:
            for split in SPLITS:
                target = out / f"{split}.jsonl"
                if result.written.get(split):
                    temps.pop(split).replace(target)
                    result.files.append(target)
                elif target.exists():
                    target.unlink()  # a stale file from an earlier export
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return result
