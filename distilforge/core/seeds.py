"""Seed readers: stream rows from JSONL/JSON/CSV/Parquet files, a `save_to_disk` folder or a Hub dataset.

Every row error names the file and line (or row index) and the field, and the whole file is checked
before any request is sent, so bad input never costs money or leaves a half-written run.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilforge.core.config import SeedFields
from distilforge.core.grading import canonical_gold, infer_answer_type
from distilforge.core.records import Seed


class SeedError(ValueError):
    """Bad seed input; the message names the file, line and field."""


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise SeedError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SeedError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        # {"data": [...]} and similar single-key wrappers are common exports.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SeedError(f"{path}: expected a JSON list of objects")
        data = lists[0]
    if not isinstance(data, list):
        raise SeedError(f"{path}: expected a JSON list of objects")
    for i, row in enumerate(data):
        yield f"{path}[{i}]", row


def _iter_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}[row {i}]", row
            i += 1


def _iter_disk(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise SeedError(f"{path}: a DatasetDict without a 'train' split ({', '.join(ds)})")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{path}[row {i}]", row


def _iter_hub(name: str, subset: str | None, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    ds = datasets.load_dataset(name, subset, split=split, streaming=True)
    for i, row in enumerate(ds):
        yield f"{name}:{split}[row {i}]", row


def iter_rows(path: str, *, split: str = "train", subset: str | None = None) -> Iterator[tuple[str, Any]]:
    p = Path(path)
    if p.is_dir():
        if not (p / "dataset_info.json").exists() and not (p / "dataset_dict.json").exists():
            raise SeedError(f"{p}: a folder, but not one written by datasets' save_to_disk")
        return _iter_disk(p)
    if p.is_file():
        readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv, ".parquet": _iter_parquet}
        reader = readers.get(p.suffix.lower())
        if reader is None:
            raise SeedError(f"{p}: unsupported seed file type '{p.suffix}' (use .jsonl, .json, .csv or .parquet)")
        return reader(p)
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return _iter_hub(path, subset, split)
    raise SeedError(f"{path}: seed file not found")


CHAT_ROLES = ("system", "user", "assistant", "tool")


def looks_openai_chat(row: Any, fields: SeedFields) -> bool:
    """A row in OpenAI chat form (`messages`, no question field): what `seeds.format: auto` reads as openai-chat."""
    return isinstance(row, dict) and fields.question not in row and isinstance(row.get("messages"), list)


def _turn_text(where: str, i: int, content: Any) -> str:
    """A turn's text: a string, or the text parts of a content list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise SeedError(f"{where}: messages[{i}].content[{j}]: a {kind!r} part; only text parts are read")
            parts.append(part["text"])
        return "\n".join(parts)
    raise SeedError(f"{where}: messages[{i}].content: expected a string or a list of text parts, "
                    f"got {type(content).__name__}")


def openai_chat_row(where: str, row: Any) -> tuple[list[dict[str, str]], str, str | None, dict[str, Any]]:
    """One OpenAI chat line -> (context, question, reference answer or None, metadata).

    The question is the last user turn; the reference is the last assistant turn after it; the context
    is every turn before it (system turns, earlier user/assistant turns) in order, plus any system turn
    after it. Tool turns, and assistant turns that only call tools, carry no text and are skipped.
    """
    if not isinstance(row, dict):
        raise SeedError(f"{where}: expected an object with a 'messages' list (seeds.format: openai-chat)")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SeedError(f"{where}: 'messages' must be a non-empty list (seeds.format: openai-chat)")
    metadata = row.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise SeedError(f"{where}: 'metadata' must be an object, got {type(metadata).__name__}")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SeedError(f"{where}: messages[{i}]: expected an object with 'role' and 'content'")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise SeedError(f"{where}: messages[{i}]: role {role!r} is not one of {', '.join(CHAT_ROLES)}")
        content = message.get("content")
        if role == "tool" or (role == "assistant" and content is None and message.get("tool_calls")):
            continue
        if content is None:
            raise SeedError(f"{where}: messages[{i}]: no content")
        text = _turn_text(where, i, content)
        if not text.strip():
            raise SeedError(f"{where}: messages[{i}]: empty {role} content")
        turns.append((role, text))
    last_user = max((k for k, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None:
        raise SeedError(f"{where}: no user turn in 'messages' (the last user turn is the question)")
    after = turns[last_user + 1 :]
    context = [{"role": r, "content": t} for r, t in turns[:last_user]]
    context += [{"role": r, "content": t} for r, t in after if r == "system"]
    answers = [t for r, t in after if r == "assistant"]
    return context, turns[last_user][1], (answers[-1] if answers else None), metadata


def _openai_seeds(rows: Iterator[tuple[str, Any]], fields: SeedFields, limit: int | None,
                  answer_type: str) -> Iterator[Seed]:
    seen_ids: set[str] = set()
    id_key = fields.id or "id"
    for index, (where, row) in enumerate(rows):
        if limit is not None and index >= limit:
            return
        context, question, reference, metadata = openai_chat_row(where, row)
        raw_gold = reference if fields.answer is not None else None
        kind = infer_answer_type(raw_gold, question) if answer_type == "auto" else answer_type
        gold = canonical_gold(raw_gold, kind)
        if raw_gold is not None and gold is None:
            raise SeedError(f"{where}: the assistant turn has no readable {kind} answer: {raw_gold[:80]!r}")
        if id_key in metadata:
            seed_id = str(metadata[id_key])
        elif fields.id is not None:
            raise SeedError(f"{where}: missing 'metadata.{fields.id}' (seeds.fields.id)")
        else:
            seed_id = f"{index:06d}"
        if seed_id in seen_ids:
            raise SeedError(f"{where}: duplicate seed id {seed_id!r}")
        seen_ids.add(seed_id)
        meta: dict[str, Any] = {"raw_answer": raw_gold} if raw_gold is not None else {}
        if reference is not None and raw_gold is None:
            meta["reference"] = reference
        if metadata:
            meta["metadata"] = metadata
        yield Seed(seed_id=seed_id, question=question, gold=gold, answer_type=kind, source=where,
                   meta=meta, context=context or None)


def read_seeds(
    path: str,
    fields: SeedFields,
    *,
    limit: int | None = None,
    answer_type: str = "auto",
    split: str = "train",
    subset: str | None = None,
    format: str = "auto",
) -> Iterator[Seed]:
    """Yield validated seeds in file order; `seed_id` is the id field or the row's position.

    `format`: "fields" (rows with the configured fields), "openai-chat" (OpenAI chat lines: the last user
    turn is the question, the assistant turn after it the reference answer, earlier turns the context),
    or "auto" (openai-chat when the first row looks like one, see `looks_openai_chat`).
    """
    rows = iter_rows(path, split=split, subset=subset)
    if format == "auto":
        first = next(rows, None)
        if first is None:
            return
        format = "openai-chat" if looks_openai_chat(first[1], fields) else "fields"
        rows = itertools.chain([first], rows)
    if format == "openai-chat":
        yield from _openai_seeds(rows, fields, limit, answer_type)
        return
    seen_ids: set[str] = set()
    for index, (where, row) in enumerate(rows):
        if limit is not None and index >= limit:
            return
        if not isinstance(row, dict):
            raise SeedError(f"{where}: expected an object with a '{fields.question}' field")
        question = row.get(fields.question)
        if question is None:
            raise SeedError(f"{where}: missing field '{fields.question}' (seeds.fields.question)")
        if not isinstance(question, str) or not question.strip():
            raise SeedError(f"{where}: field '{fields.question}' must be a non-empty string")
        raw_gold = None
        if fields.answer is not None:
            if fields.answer not in row:
                raise SeedError(f"{where}: missing field '{fields.answer}' (seeds.fields.answer; null if none)")
            raw_gold = row[fields.answer]
        kind = infer_answer_type(raw_gold, question) if answer_type == "auto" else answer_type
        gold = canonical_gold(raw_gold, kind)
        if raw_gold is not None and gold is None:
            raise SeedError(f"{where}: field '{fields.answer}' has no readable {kind} answer: {str(raw_gold)[:80]!r}")
        if fields.id is not None:
            if fields.id not in row:
                raise SeedError(f"{where}: missing field '{fields.id}' (seeds.fields.id)")
            seed_id = str(row[fields.id])
            if seed_id in seen_ids:
                raise SeedError(f"{where}: duplicate id {seed_id!r} in field '{fields.id}'")
            seen_ids.add(seed_id)
        else:
            seed_id = f"{index:06d}"
        input_text = None
        if fields.input is not None:
            value = row.get(fields.input)
            input_text = str(value) if value not in (None, "", "<noinput>") else None
        yield Seed(seed_id=seed_id, question=question, gold=gold, answer_type=kind, source=where,
                   input=input_text, meta={"raw_answer": raw_gold} if isinstance(raw_gold, str) else {})


def seed_rank(seed_id: str, world_size: int) -> int:
    """The rank a seed belongs to: a stable hash of its id, so its samples (and its journal rows) always
    land on the same rank, whatever the order the file is read in."""
    if world_size <= 1:
        return 0
    digest = hashlib.blake2b(seed_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % world_size


def in_probe(seed_id: str, fraction: float, rng_seed: int) -> bool:
    """Whether a seed belongs to the probe split (held apart from training): a stable hash of its id."""
    digest = hashlib.blake2b(f"probe:{rng_seed}:{seed_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


@dataclass(frozen=True)
class SeedSelection:
    """Which seeds a pipeline works on: all, all but the probe split, or a targeted round's few."""

    only: frozenset[str] | None = None  # a targeted round's seeds
    probe: tuple[float, int] | None = None  # (fraction, rng seed): leave the probe split out

    def __call__(self, seed_id: str) -> bool:
        if self.only is not None and seed_id not in self.only:
            return False
        return self.probe is None or not in_probe(seed_id, *self.probe)


def shard_seeds(seeds: Iterator[Seed], rank: int, world_size: int) -> Iterator[Seed]:
    if world_size <= 1:
        yield from seeds
        return
    for seed in seeds:
        if seed_rank(seed.seed_id, world_size) == rank:
            yield seed


def count_and_validate(path: str, fields: SeedFields, **kwargs: Any) -> int:
    """One streaming pass over the seeds: raises on the first bad row, returns the count."""
    return sum(1 for _ in read_seeds(path, fields, **kwargs))
