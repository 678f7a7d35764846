"""JSON on the request path: orjson where it reads and writes the same values as the standard library.

Request bodies, answers and JSONL rows are encoded and decoded once per request; orjson does it in a
fraction of the CPU. Where the two libraries disagree, the standard library's answer is kept:
- decoding falls back to `json.loads` for what orjson refuses (NaN and Infinity, invalid UTF-8), so an
  answer is read as before (save an integer of more than 64 bits, which orjson reads as a float; no
  field an answer is read for carries one);
- encoding falls back to `json.dumps` for what orjson refuses (integers over 64 bits, lone surrogates,
  types it does not know); non-string keys are written as strings, as `json.dumps` writes them. One
  difference stays: orjson writes NaN and Infinity as null, which JSON readers (Arrow's) accept.
Anything hashed into a key (journal and response-cache keys) stays on `json.dumps`: those bytes are
what earlier run folders and caches were keyed by.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        return json.dumps(value).encode()  # lone surrogates come out escaped, as before


def dumps_line(value: Any) -> bytes:
    """One JSONL line: compact UTF-8 JSON and a newline."""
    try:
        return orjson.dumps(value, option=_OPTIONS | orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(value, ensure_ascii=False) + "\n").encode()


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # NaN, big integers, odd encodings: read as the standard library reads them
