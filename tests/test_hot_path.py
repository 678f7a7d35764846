"""The request path's shortcuts give exactly what the plain code gave: keys, JSON, numbers."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

import distilforge.core.grading as grading
from distilforge.core import fastjson
from distilforge.core.journal import key_json, request_key, request_keys
from distilforge.core.response_cache import cache_key, cache_keys
from distilforge.pipeline.dataset_writer import REJECTED_COLUMNS, JsonlSink
from distilforge.schemas.records import Record

IDENTITY = {"model": "m", "params": {"temperature": 0.7, "stop": ["\n\n", "é"], "seed": None}, "backend": "openai"}
PROMPTS = [
    [{"role": "user", "content": "Q: what is 2 + 2?"}],
    [{"role": "system", "content": "Réponds {en} \"français\" \\ ✓"}, {"role": "user", "content": "x\U0001F600"}],
]


def _sha(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("messages", PROMPTS)
def test_journal_and_cache_keys_are_the_bytes_earlier_runs_used(messages):
    """A resumed run folder and a shared cache find what earlier versions wrote under the same keys."""
    indices = [0, 1, 7, 12]
    assert request_keys(key_json(IDENTITY), messages, indices) == [
        _sha({"t": IDENTITY, "m": messages, "i": i}) for i in indices]
    assert [request_key(IDENTITY, messages, i) for i in indices] == [
        _sha({"t": IDENTITY, "m": messages, "i": i}) for i in indices]
    endpoint = ["http://a:1/v1", "http://b:2/v1"]
    assert cache_keys(key_json(endpoint), key_json(IDENTITY), messages, indices) == [
        _sha({"e": endpoint, "t": IDENTITY, "m": messages, "i": i}) for i in indices]
    assert cache_key(endpoint, IDENTITY, messages, 3) == _sha({"e": endpoint, "t": IDENTITY, "m": messages, "i": 3})


def test_fast_json_reads_and_writes_what_the_standard_library_does():
    body = {"model": "m", "messages": PROMPTS[1], "temperature": 0.7, "n": 2, "extra": {1: "a"}}
    assert json.loads(fastjson.dumps(body)) == json.loads(json.dumps(body))
    assert fastjson.dumps({"s": "\ud800"}) == json.dumps({"s": "\ud800"}).encode()  # lone surrogate: as before
    assert fastjson.dumps({"n": 2**70}) == json.dumps({"n": 2**70}).encode()
    assert math.isnan(fastjson.loads(b'{"x": NaN}')["x"])  # what orjson refuses is read by json
    answer = '{"choices": [{"message": {"content": "4 \\u00e9"}}], "usage": {"prompt_tokens": 3}}'
    assert fastjson.loads(answer.encode()) == json.loads(answer)


def test_jsonl_rows_read_back_as_written(tmp_path):
    record = Record(seed_id="000001", sample_index=0, question="Qué?", gold="4", answer_type="number",
                    prompt=PROMPTS[1], teacher_model="m", text="The answer is 4 ✓")
    sink = JsonlSink(tmp_path / "kept.jsonl", REJECTED_COLUMNS)
    sink.write(record)
    sink.write_row({"seed_id": "000002", "error": "é"})
    sink.close()
    lines = (tmp_path / "kept.jsonl").read_text(encoding="utf-8").splitlines()
    row = record.to_row()
    assert json.loads(lines[0]) == json.loads(json.dumps({c: row.get(c) for c in REJECTED_COLUMNS}))
    assert json.loads(lines[1]) == {"seed_id": "000002", "error": "é"}


@pytest.mark.parametrize("raw", ["4", "-4", "1.50", "007", "-0", "12345678901234567890", "3.", ".5", "-.5",
                                 "1,000", " 4", "4 ", "1/2", "--4", "4.5.6", "2x", "$5", "5%", "٣"])
def test_plain_numbers_parse_as_the_full_reader_parses_them(raw, monkeypatch):
    fast = grading.parse_number(raw)
    monkeypatch.setattr(grading, "_PLAIN_NUMBER_RE", re.compile(r"(?!)"))  # the full path only
    assert fast == grading.parse_number(raw)
