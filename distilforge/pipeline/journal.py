"""The request journal: every teacher completion is committed to SQLite before it is used.

Keyed by the logical request (teacher model and sampling params, messages, sample index) rather than
the endpoint it went to, so a rerun on the same run folder reuses every answer already paid for and
only asks again for what was in flight when the previous run stopped.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from distilforge.teachers.base import Completion, TeacherResponse

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    seed_id TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def request_key(teacher_identity: dict[str, Any], messages: list[dict[str, str]], sample_index: int) -> str:
    blob = json.dumps({"t": teacher_identity, "m": messages, "i": sample_index}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class Journal:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we commit explicitly, one transaction per teacher response.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the case we guard); fsync waits for checkpoints.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def lookup(self, keys: list[str]) -> dict[str, Completion | tuple[Completion, int, int, str]]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens, model FROM responses WHERE key IN ({marks})",
            keys,
        ).fetchall()
        return {r[0]: (Completion(r[1], r[2]), r[3], r[4], r[5]) for r in rows}

    def commit(
        self, seed_id: str, keys_and_indices: list[tuple[str, int]], response: TeacherResponse
    ) -> list[tuple[int, int]]:
        """Store a response's completions under their keys; returns per-sample (prompt, completion) tokens.

        Usage comes per response, not per choice: it is split evenly so that run totals stay exact.
        """
        n = len(response.completions)
        shares = []
        for j in range(n):
            p = response.prompt_tokens // n + (1 if j < response.prompt_tokens % n else 0)
            c = response.completion_tokens // n + (1 if j < response.completion_tokens % n else 0)
            shares.append((p, c))
        now = time.time()
        rows = [
            (key, seed_id, index, comp.text, comp.finish_reason, shares[j][0], shares[j][1], response.model, now)
            for j, ((key, index), comp) in enumerate(zip(keys_and_indices, response.completions, strict=False))
        ]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?)", rows)
        self._db.execute("COMMIT")
        return shares

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()
