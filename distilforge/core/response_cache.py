"""The response cache: teacher answers shared across run folders, so the same request is paid once.

Content-addressed: a row's key is a hash of (endpoint, model and sampling parameters, the exact
messages, sample index), so sampled requests (temperature > 0) are cached too, one row per sample
index: asking for samples 0..3 again gets the same four answers, asking for sample 4 pays for one.

One SQLite file under the cache root (`$DISTILFORGE_CACHE`, else `$XDG_CACHE_HOME/distilforge`),
`responses.sqlite`; `DISTILFORGE_RESPONSE_CACHE` names another file, or `off` turns it off for the
process. Several processes share it safely: WAL, a busy timeout, and `INSERT OR IGNORE` in short
transactions (the first answer stored for a key stays; a concurrent run's equal key is a no-op).
Its size is bounded (`DISTILFORGE_RESPONSE_CACHE_MAX_MB`, default 2048): when a run closes it
over the bound, the least recently used rows go. The model cache beside it is never touched.

The run's journal stays the source of truth for a run folder: a hit is committed to the journal at
$0 before it is used, so a resume replays it like any other answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from distilforge.core.journal import key_blobs, key_json
from distilforge.schemas.records import Completion

ENV_PATH = "DISTILFORGE_RESPONSE_CACHE"
ENV_MAX_MB = "DISTILFORGE_RESPONSE_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
FILE_NAME = "responses.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    used REAL NOT NULL,
    reasoning TEXT,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS responses_used ON responses (used);
"""

Hit = tuple[Completion, int, int, str]  # completion, prompt tokens, completion tokens, model


def cache_root() -> Path:
    """The cache root shared with the model cache: $DISTILFORGE_CACHE, else $XDG_CACHE_HOME/distilforge."""
    root = os.environ.get("DISTILFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distilforge")
    return Path(root)


def default_cache_path() -> Path | None:
    """The process's cache file, or None when `DISTILFORGE_RESPONSE_CACHE=off`."""
    named = os.environ.get(ENV_PATH, "").strip()
    if named.lower() in ("off", "0", "false", "no", "none"):
        return None
    return Path(named).expanduser() if named else cache_root() / FILE_NAME


def owner_cache_path(owner: str) -> Path | None:
    """The service's cache for one owner: never shared between owners (a file per owner)."""
    base = default_cache_path()
    if base is None:
        return None
    digest = hashlib.sha256(owner.encode()).hexdigest()[:16]
    return base.parent / "owners" / f"{digest}.sqlite"


def max_bytes() -> int:
    raw = os.environ.get(ENV_MAX_MB, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(mb * 1024 * 1024)


def cache_keys(endpoint_json: str, identity_json: str, messages: list[dict[str, Any]],
               indices: range | list[int]) -> list[str]:
    """The cache keys of a prompt's samples; the endpoint and identity come encoded with `key_json`."""
    blobs = key_blobs({"e": endpoint_json, "t": identity_json, "m": key_json(messages)}, indices)
    return [hashlib.sha256(blob).hexdigest() for blob in blobs]


def cache_key(endpoint: list[str], identity: dict[str, Any], messages: list[dict[str, Any]], index: int) -> str:
    return cache_keys(key_json(endpoint), key_json(identity), messages, [index])[0]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA busy_timeout=30000")  # another run is writing: wait, don't fail
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
    for column, kind in (("reasoning", "TEXT"), ("reasoning_tokens", "INTEGER NOT NULL DEFAULT 0")):
        if column not in have:  # a cache written before reasoning traces were kept
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                db.execute(f"ALTER TABLE responses ADD COLUMN {column} {kind}")
    return db


class ResponseCache:
    """One cache file; reads and writes run in a thread (one connection, serialized by a lock)."""

    def __init__(self, path: Path):
        self.path = path
        self._db = _connect(path)
        self._lock = threading.Lock()
        self.hits = 0
        self.stored = 0
        # Nothing to find in a cache that was empty when the run opened it: lookups are skipped (a run
        # started at the same moment may store answers meanwhile; they serve the next run).
        self.empty_at_open = self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM responses)").fetchone()[0] == 1
        # Writes from the event loop queue up and one thread writes them together, a transaction a round.
        self._pending: list[tuple[str, Completion, int, int, str]] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- synchronous ---------------------------------------------------------------------------
    def lookup(self, keys: list[str]) -> dict[str, Hit]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        with self._lock:
            rows = self._db.execute("SELECT key, text, finish_reason, prompt_tokens, completion_tokens, model, "
                                    f"reasoning, reasoning_tokens FROM responses WHERE key IN ({marks})",
                                    keys).fetchall()
            if rows:
                self._write(lambda db: db.executemany("UPDATE responses SET used = ? WHERE key = ?",
                                                      [(time.time(), r[0]) for r in rows]))
        self.hits += len(rows)
        return {r[0]: (Completion(r[1], r[2], r[6], int(r[7] or 0)), r[3], r[4], r[5]) for r in rows}

    def put(self, rows: list[tuple[str, Completion, int, int, str]]) -> None:
        """Store answers; a key already there keeps its first answer (INSERT OR IGNORE)."""
        if not rows:
            return
        now = time.time()
        values = [(k, c.text, c.finish_reason, p, t, m, now, now, c.reasoning, c.reasoning_tokens)
                  for k, c, p, t, m in rows]
        with self._lock:
            self._write(lambda db: db.executemany("INSERT OR IGNORE INTO responses (key, text, finish_reason, prompt_tokens, "
                                                  "completion_tokens, model, created, used, reasoning, "
                                                  "reasoning_tokens) VALUES (?,?,?,?,?,?,?,?,?,?)", values))
        self.stored += len(rows)

    def _write(self, op: Any) -> None:
        # One short IMMEDIATE transaction: atomic, and concurrent writers queue on the busy timeout.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            op(self._db)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def stats(self) -> dict[str, Any]:
        with self._lock:
            count, oldest, newest = self._db.execute(
                "SELECT COUNT(*), MIN(created), MAX(created) FROM responses").fetchone()
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return {"path": str(self.path), "entries": count, "bytes": (pages - free) * page_size,
                "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
                "max_bytes": max_bytes(), "oldest": oldest, "newest": newest}

    def prune(self, *, max_size: int | None = None, older_than_s: float | None = None,
              everything: bool = False, vacuum: bool = True) -> int:
        """Drop rows: all, those unused for `older_than_s`, then the least recently used past `max_size`."""
        removed = 0
        with self._lock:
            def delete(sql: str, args: Any = ()) -> None:
                nonlocal removed
                self._write(lambda db: db.execute(sql, args))
                removed += self._db.execute("SELECT changes()").fetchone()[0]

            if everything:
                delete("DELETE FROM responses")
            if older_than_s is not None:
                delete("DELETE FROM responses WHERE used < ?", (time.time() - older_than_s,))
            if max_size is not None:
                removed += self._shrink_to(max_size)
            if vacuum and removed:
                with contextlib.suppress(sqlite3.OperationalError):
                    self._db.execute("VACUUM")  # give the space back; skipped while another run holds the file
        return removed

    def _shrink_to(self, max_size: int) -> int:
        removed = 0
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        while True:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            live = (pages - free) * page_size
            count = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            if live <= max_size or not count:
                return removed
            # The least recently used tenth (at least one row) per round, until under the bound.
            n = max(1, count // 10)
            self._write(lambda db, n=n: db.execute(
                "DELETE FROM responses WHERE key IN (SELECT key FROM responses ORDER BY used LIMIT ?)", (n,)))
            removed += n

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- from the event loop -------------------------------------------------------------------
    async def lookup_async(self, keys: list[str]) -> dict[str, Hit]:
        return await asyncio.to_thread(self.lookup, keys) if keys else {}

    async def put_async(self, rows: list[tuple[str, Completion, int, int, str]]) -> None:
        """Queue answers for the next group write and return (the run's journal already holds them)."""
        self._pending.extend(rows)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.put, batch)
            except sqlite3.Error:
                self._pending.clear()  # best effort: a later run pays for what is missing
                return

    async def aclose(self) -> None:
        if self._flusher is not None:
            await self._flusher
        def bound_and_close() -> None:
            try:
                with self._lock:
                    self._shrink_to(max_bytes())
            except sqlite3.OperationalError:
                pass  # busy past the timeout: the next run bounds it
            self.close()

        await asyncio.to_thread(bound_and_close)


def open_cache(path: Path | None) -> ResponseCache | None:
    return None if path is None else ResponseCache(path)
