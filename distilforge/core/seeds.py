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

from distilforge.core.grading import gold_answer
from distilforge.schemas import SeedFields
from distilforge.schemas.records import Seed


class SeedError(ValueError):
    """Bad seed input; the message names the file, line and field."""


@dataclass(frozen=True)
class BadLine:
    """A line that could not be read at all (broken JSON): skipped or refused by `seeds.on_bad_line`."""

    reason: str


def _json_error(exc: json.JSONDecodeError) -> str:
    # exc.colno counts characters from the start of the text it parsed: the line, as an editor shows it.
    return f"invalid JSON ({exc.msg} at column {exc.colno})"


def _iter_jsonl(path: Path, bad_lines: bool = False) -> Iterator[tuple[str, Any]]:
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first line.
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                if not bad_lines:
                    raise SeedError(f"{path}:{lineno}: {_json_error(exc)}") from None
                yield f"{path}:{lineno}", BadLine(_json_error(exc))


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


def _csv_dialect(sample: str) -> Any:
    """The file's delimiter (comma, semicolon, tab or pipe), sniffed from its first lines."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _iter_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        dialect = _csv_dialect(fh.read(64 * 1024))
        fh.seek(0)
        reader = csv.reader(fh, dialect, strict=True)  # strict: an unclosed quote is an error, not the rest of the file
        try:
            header = [name.strip() for name in next(reader, [])]  # "question ," is the column "question"
            start = reader.line_num
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                yield f"{path}:{start + 1}", dict(zip(header, values, strict=False))
                start = reader.line_num
        except csv.Error as exc:
            raise SeedError(f"{path}:{start + 1}: {exc} (a quote opened on this line is never closed?)") from None
        if reader.line_num > start and not header:
            raise SeedError(f"{path}: no header row")


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

    try:
        ds = datasets.load_dataset(name, subset, split=split, streaming=True)
    except Exception as exc:  # offline, not on the Hub, gated: one line that says how to get it
        import os

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        how = ("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to download, or give a local "
               "file or a folder written by save_to_disk" if offline
               else "check the name (and HF_TOKEN for a gated set), or give a local file or folder")
        raise SeedError(f"{name}: the Hub dataset could not be loaded ({type(exc).__name__}); {how}") from None
    for i, row in enumerate(ds):
        yield f"{name}:{split}[row {i}]", row


def iter_rows(path: str, *, split: str = "train", subset: str | None = None,
              bad_lines: bool = False) -> Iterator[tuple[str, Any]]:
    """(where, row) pairs; `bad_lines`: a JSONL line that is not JSON comes as a `BadLine`, not an error."""
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
        return _iter_jsonl(p, bad_lines) if reader is _iter_jsonl else reader(p)
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return _iter_hub(path, subset, split)
    raise SeedError(f"{path}: seed file not found")


CHAT_ROLES = ("system", "developer", "user", "assistant")


def _stored_completion(row: Any) -> Any:
    """OpenAI's stored-completions export (`request.messages` + `response.choices`) as a chat line."""
    if not isinstance(row, dict) or "messages" in row or not isinstance(row.get("request"), dict):
        return row
    request, response = row["request"], row.get("response") or {}
    messages = list(request.get("messages") or [])
    choices = response.get("choices") if isinstance(response, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict) and choices[0].get("message"):
        messages.append(choices[0]["message"])
    return {"messages": messages, "metadata": row.get("metadata", request.get("metadata"))}


def looks_openai_chat(row: Any, fields: SeedFields) -> bool:
    """A row in OpenAI chat form (`messages`, or a stored completion's `request.messages`, and no question
    field): what `seeds.format: auto` reads as openai-chat."""
    row = _stored_completion(row)
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


def _turn(where: str, i: int, message: Any) -> tuple[str, str, bool]:
    """(role, text, trainable) of one message; `developer` is read as `system`, `weight: 0` as not trainable."""
    if not isinstance(message, dict):
        raise SeedError(f"{where}: messages[{i}]: expected an object with 'role' and 'content'")
    role = message.get("role")
    if role == "tool" or role == "function" or message.get("tool_calls") or message.get("function_call"):
        raise SeedError(f"{where}: messages[{i}]: a tool turn; tool use is not distilled (remove the tool turns, "
                        "or skip such lines with seeds.on_bad_line: skip)")
    if role not in CHAT_ROLES:
        raise SeedError(f"{where}: messages[{i}]: role {role!r} is not one of {', '.join(CHAT_ROLES)}")
    if "name" in message and not isinstance(message["name"], str):
        raise SeedError(f"{where}: messages[{i}].name: expected a string")
    weight = message.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise SeedError(f"{where}: messages[{i}].weight: expected 0 or 1, got {weight!r}")
    content = message.get("content")
    if content is None:
        raise SeedError(f"{where}: messages[{i}]: no content")
    text = _turn_text(where, i, content)
    if not text.strip():
        raise SeedError(f"{where}: messages[{i}]: empty {role} content")
    return ("system" if role == "developer" else role), text, weight == 1


def openai_chat_row(where: str, row: Any) -> tuple[list[dict[str, str]], str, str | None, dict[str, Any]]:
    """One OpenAI chat line -> (context, question, reference answer or None, metadata).

    The question is the last user turn; the reference is the last assistant turn after it (not one
    with `weight: 0`); the context is every turn before it (system and developer turns, earlier
    user/assistant turns) in order, plus any system turn after it. Tool turns are refused by name.
    """
    row = _stored_completion(row)
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
    turns = [_turn(where, i, message) for i, message in enumerate(messages)]
    last_user = max((k for k, (role, _, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None:
        raise SeedError(f"{where}: no user turn in 'messages' (the last user turn is the question)")
    after = turns[last_user + 1 :]
    context = [{"role": r, "content": t} for r, t, _ in turns[:last_user]]
    context += [{"role": r, "content": t} for r, t, _ in after if r == "system"]
    answers = [t for r, t, trainable in after if r == "assistant" and trainable]
    return context, turns[last_user][1], (answers[-1] if answers else None), metadata


def _openai_seed(where: str, row: Any, index: int, fields: SeedFields, answer_type: str,
                 seen_ids: dict[str, str]) -> Seed | None:
    context, question, reference, metadata = openai_chat_row(where, row)
    raw_gold = reference if fields.answer is not None else None
    kind, gold = gold_answer(raw_gold, answer_type, question)
    if raw_gold is not None and gold is None:
        raise SeedError(f"{where}: the assistant turn has no readable {kind} answer: {raw_gold[:80]!r}")
    id_key = fields.id or "id"
    if id_key in metadata:
        seed_id = str(metadata[id_key])
    elif fields.id is not None:
        raise SeedError(f"{where}: missing 'metadata.{fields.id}' (seeds.fields.id)")
    else:
        seed_id = f"{index:06d}"
    if seed_id in seen_ids:
        if seen_ids[seed_id] == question:
            return None  # the same seed again (an export has a line per kept sample): read once
        raise SeedError(f"{where}: duplicate seed id {seed_id!r} with another question")
    seen_ids[seed_id] = question
    meta: dict[str, Any] = {"raw_answer": raw_gold} if raw_gold is not None else {}
    if reference is not None and raw_gold is None:
        meta["reference"] = reference
    if metadata:
        meta["metadata"] = metadata
    return Seed(seed_id=seed_id, question=question, gold=gold, answer_type=kind, source=where,
                meta=meta, context=context or None)


def _missing(where: str, row: dict[str, Any], name: str, key: str) -> SeedError:
    columns = ", ".join(repr(c) for c in row) or "none"
    return SeedError(f"{where}: missing field '{name}' ({key}); the columns are {columns}")


def _fields_seed(where: str, row: Any, index: int, fields: SeedFields, answer_type: str,
                 seen_ids: dict[str, str]) -> Seed:
    if not isinstance(row, dict):
        raise SeedError(f"{where}: expected an object with a '{fields.question}' field")
    question = row.get(fields.question)
    if question is None:
        raise _missing(where, row, fields.question, "seeds.fields.question")
    if not isinstance(question, str) or not question.strip():
        raise SeedError(f"{where}: field '{fields.question}' must be a non-empty string")
    raw_gold = None
    if fields.answer is not None:
        if fields.answer not in row:
            raise _missing(where, row, fields.answer, "seeds.fields.answer; null if none")
        raw_gold = row[fields.answer]
    kind, gold = gold_answer(raw_gold, answer_type, question)
    if raw_gold is not None and gold is None:
        raise SeedError(f"{where}: field '{fields.answer}' has no readable {kind} answer: {str(raw_gold)[:80]!r}")
    if fields.id is not None:
        if fields.id not in row:
            raise _missing(where, row, fields.id, "seeds.fields.id")
        seed_id = str(row[fields.id])
        if seed_id in seen_ids:
            raise SeedError(f"{where}: duplicate id {seed_id!r} in field '{fields.id}'")
        seen_ids[seed_id] = question
    else:
        seed_id = f"{index:06d}"
    input_text = None
    if fields.input is not None:
        value = row.get(fields.input)
        input_text = str(value) if value not in (None, "", "<noinput>") else None
    return Seed(seed_id=seed_id, question=question, gold=gold, answer_type=kind, source=where,
                input=input_text, meta={"raw_answer": raw_gold} if isinstance(raw_gold, str) else {})


def read_seeds(
    path: str,
    fields: SeedFields,
    *,
    limit: int | None = None,
    answer_type: str = "auto",
    split: str = "train",
    subset: str | None = None,
    format: str = "auto",
    on_bad_line: str = "stop",
    rejected: list[dict[str, str]] | None = None,
) -> Iterator[Seed]:
    """Yield validated seeds in file order; `seed_id` is the id field or the row's position.

    `format`: "fields" (rows with the configured fields), "openai-chat" (OpenAI chat lines: the last user
    turn is the question, the assistant turn after it the reference answer, earlier turns the context),
    or "auto" (openai-chat when the first row looks like one, see `looks_openai_chat`).
    `on_bad_line`: "stop" raises on the first bad row; "skip" leaves it out and, when `rejected` is
    given, appends `{"where", "reason"}` to it.
    """
    skip = on_bad_line == "skip"
    rows = iter_rows(path, split=split, subset=subset, bad_lines=skip)
    if format == "auto":
        peeked: list[tuple[str, Any]] = []  # bad lines before the first good row, then that row
        for item in rows:
            peeked.append(item)
            if not isinstance(item[1], BadLine):
                break
        good = peeked[-1][1] if peeked and not isinstance(peeked[-1][1], BadLine) else None
        format = "openai-chat" if good is not None and looks_openai_chat(good, fields) else "fields"
        rows = itertools.chain(peeked, rows)
    make = _openai_seed if format == "openai-chat" else _fields_seed
    seen_ids: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        if limit is not None and index >= limit:
            return
        try:
            if isinstance(row, BadLine):
                raise SeedError(f"{where}: {row.reason}")
            seed = make(where, row, index, fields, answer_type, seen_ids)
        except SeedError as exc:
            if not skip:
                raise
            if rejected is not None:
                rejected.append({"where": where, "reason": str(exc).removeprefix(f"{where}: ")})
            continue
        if seed is not None:
            yield seed


def read_questions(path: str, fields: SeedFields, *, answer_type: str = "auto",
                   limit: int | None = None) -> Iterator[Seed]:
    """Questions from a file that is not the job's seed file (eval sets, the ICL pool, a probe file):
    the same reader and checks, none of `seeds:`'s settings (its split, subset, format, bad-line policy)."""
    return read_seeds(path, fields, limit=limit, answer_type=answer_type)


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


def in_validation(seed_id: str, fraction: float, rng_seed: int) -> bool:
    """Whether a seed's samples go to the validation split: a stable hash of its id, so every sample
    of a seed lands on one side (the student is never evaluated on a question it trained on)."""
    digest = hashlib.blake2b(f"validation:{rng_seed}:{seed_id}".encode(), digest_size=8).digest()
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

