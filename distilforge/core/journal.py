"""The request journal: every teacher answer is committed to SQLite before it is used.

Keyed by the logical request (teacher model and sampling params, messages, sample index) rather than
the endpoint it went to, so a rerun on the same run folder reuses every answer already paid for and
only asks again for what was in flight when the previous run stopped.

Three tables:
- `responses`: one row per sample, with its share of the tokens and cost.
- `inflight`: a row per request, written *before* it is sent with its worst-case cost, and deleted in
  the same transaction that commits its answer. Rows left by a crashed run are orphans: their cost is
  unknown, so every later run counts them at worst case against `budget.max_usd`.
- `dead_letters`: requests that failed after all retries, retried by the next run on this folder.
- `batches`: OpenAI Batch API jobs, so a restart polls a submitted batch instead of paying again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
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
    created REAL NOT NULL,
    cost_usd REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inflight (
    request_id TEXT PRIMARY KEY,
    seed_id TEXT NOT NULL,
    keys TEXT NOT NULL,
    reserved_usd REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    key TEXT PRIMARY KEY,
    seed_id TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    error TEXT NOT NULL,
    retryable INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    input_file_id TEXT NOT NULL,
    keys TEXT NOT NULL,
    reserved_usd REAL NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL
);
"""

Found = tuple[Completion, int, int, str]
Op = Callable[[sqlite3.Connection], Any]


def request_key(teacher_identity: dict[str, Any], messages: list[dict[str, str]], sample_index: int) -> str:
    blob = json.dumps({"t": teacher_identity, "m": messages, "i": sample_index}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _split(total: int | float, n: int, j: int) -> Any:
    if isinstance(total, float):
        return total / n
    return total // n + (1 if j < total % n else 0)


class Journal:
    def __init__(self, path: Path, guard: Callable[[], None] | None = None):
        self.path = path
        # Called before every commit: a service worker checks its lease here, so a worker that
        # lost its job cannot write to the job's journal (the exception rolls the write back).
        self.guard = guard
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we commit explicitly, one transaction per teacher response.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the case we guard); fsync waits for checkpoints.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        # Group commit: writes from the event loop queue up and a worker thread commits them together,
        # one transaction per round, on its own connection (SQLite releases the GIL while it works).
        self._writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._writer.execute("PRAGMA synchronous=NORMAL")
        self._writer.execute("PRAGMA busy_timeout=10000")
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- reads ---------------------------------------------------------------------------------
    def lookup(self, keys: list[str]) -> dict[str, Found]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, model FROM responses "
            f"WHERE key IN ({marks})",
            keys,
        ).fetchall()
        return {r[0]: (Completion(r[1], r[2]), r[3], r[4], r[5]) for r in rows}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def spent_usd(self) -> float:
        """Settled cost of every answer in the journal, plus orphaned reservations at worst case."""
        paid = self._db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM responses").fetchone()[0]
        return float(paid) + self.orphaned_usd()

    def orphaned_usd(self) -> float:
        return float(self._db.execute("SELECT COALESCE(SUM(reserved_usd), 0) FROM inflight").fetchone()[0])

    def orphan_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM inflight").fetchone()[0])

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT seed_id, sample_index, error, retryable FROM dead_letters ORDER BY seed_id, sample_index"
        ).fetchall()
        return [{"seed_id": r[0], "sample_index": r[1], "error": r[2], "retryable": bool(r[3])} for r in rows]

    # -- writes --------------------------------------------------------------------------------
    def _transaction(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
        results: list[Any] = []
        conn.execute("BEGIN")
        try:
            for op in ops:
                results.append(op(conn))
            if self.guard is not None:
                self.guard()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    def _apply(self, op: Op) -> Any:
        """Run one write now, in its own transaction (the synchronous path)."""
        return self._transaction(self._db, [op])[0]

    async def _submit(self, op: Op) -> Any:
        """Queue a write for the next group commit; returns once it is durable."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            ops = [op for op, _ in batch]
            try:
                results = await asyncio.to_thread(self._transaction, self._writer, ops)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    @staticmethod
    def _begin_op(request_id: str, seed_id: str, keys: list[str], reserved_usd: float) -> Op:
        row = (request_id, seed_id, json.dumps(keys), reserved_usd, time.time())
        return lambda conn: conn.execute("INSERT INTO inflight VALUES (?,?,?,?,?)", row)

    @staticmethod
    def _commit_op(seed_id: str, keys_and_indices: list[tuple[str, int]], response: TeacherResponse,
                   cost_usd: float, request_id: str | None) -> Op:
        # Usage comes per response, not per choice: split evenly so that run totals stay exact.
        n = len(response.completions)
        now = time.time()
        rows, shares = [], []
        for j, ((key, index), comp) in enumerate(zip(keys_and_indices, response.completions, strict=False)):
            p, c = _split(response.prompt_tokens, n, j), _split(response.completion_tokens, n, j)
            shares.append((p, c))
            rows.append((key, seed_id, index, comp.text, comp.finish_reason, p, c, response.model, now,
                         _split(float(cost_usd), n, j)))

        def op(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            conn.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            conn.executemany("DELETE FROM dead_letters WHERE key = ?", [(r[0],) for r in rows])
            if request_id is not None:
                conn.execute("DELETE FROM inflight WHERE request_id = ?", (request_id,))
            return shares

        return op

    @staticmethod
    def _fail_op(request_id: str | None, seed_id: str, keys_and_indices: list[tuple[str, int]], error: str,
                 retryable: bool, replace: bool) -> Op:
        now = time.time()
        verb = "REPLACE" if replace else "IGNORE"  # IGNORE keeps an earlier, more specific error
        rows = [(key, seed_id, index, error, int(retryable), now) for key, index in keys_and_indices]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(f"INSERT OR {verb} INTO dead_letters VALUES (?,?,?,?,?,?)", rows)
            if request_id is not None:
                conn.execute("DELETE FROM inflight WHERE request_id = ?", (request_id,))

        return op

    def begin(self, request_id: str, seed_id: str, keys: list[str], reserved_usd: float) -> None:
        """Persist a reservation before the request goes out."""
        self._apply(self._begin_op(request_id, seed_id, keys, reserved_usd))

    async def begin_async(self, request_id: str, seed_id: str, keys: list[str], reserved_usd: float) -> None:
        await self._submit(self._begin_op(request_id, seed_id, keys, reserved_usd))

    def commit(self, seed_id: str, keys_and_indices: list[tuple[str, int]], response: TeacherResponse, *,
               cost_usd: float = 0.0, request_id: str | None = None) -> list[tuple[int, int]]:
        """Store a response's completions and close its reservation in one transaction.

        Returns each sample's (prompt, completion) tokens.
        """
        return self._apply(self._commit_op(seed_id, keys_and_indices, response, cost_usd, request_id))

    async def commit_async(self, seed_id: str, keys_and_indices: list[tuple[str, int]], response: TeacherResponse,
                           *, cost_usd: float = 0.0, request_id: str | None = None) -> list[tuple[int, int]]:
        return await self._submit(self._commit_op(seed_id, keys_and_indices, response, cost_usd, request_id))

    def fail(self, request_id: str | None, seed_id: str, keys_and_indices: list[tuple[str, int]], error: str,
             retryable: bool, *, replace: bool = True) -> None:
        """A request that failed for good: nothing was billed, so its reservation closes."""
        self._apply(self._fail_op(request_id, seed_id, keys_and_indices, error, retryable, replace))

    async def fail_async(self, request_id: str | None, seed_id: str, keys_and_indices: list[tuple[str, int]],
                         error: str, retryable: bool, *, replace: bool = True) -> None:
        await self._submit(self._fail_op(request_id, seed_id, keys_and_indices, error, retryable, replace))

    def cancel(self, request_id: str) -> None:
        """Close a reservation for a request that was never sent."""
        self._db.execute("DELETE FROM inflight WHERE request_id = ?", (request_id,))

    # -- Batch API -----------------------------------------------------------------------------
    # A batch row is written when its file is uploaded (status 'uploaded', keyed by the file id) and
    # updated with the batch id once created; a crash in between is healed by matching the file id.
    def add_batch(self, input_file_id: str, groups: dict[str, Any], reserved_usd: float) -> None:
        self._db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?)",
                         (input_file_id, input_file_id, json.dumps(groups), reserved_usd, "uploaded", time.time()))

    def batch_created(self, input_file_id: str, batch_id: str) -> None:
        self._db.execute("UPDATE batches SET batch_id = ?, status = 'submitted' WHERE input_file_id = ?",
                         (batch_id, input_file_id))

    def open_batches(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT batch_id, input_file_id, keys, reserved_usd, status FROM batches "
            "WHERE status IN ('uploaded', 'submitted') ORDER BY created"
        ).fetchall()
        return [{"batch_id": r[0], "input_file_id": r[1], "groups": json.loads(r[2]), "reserved_usd": r[3],
                 "status": r[4]} for r in rows]

    def close_batch(self, input_file_id: str, status: str) -> None:
        self._db.execute("UPDATE batches SET status = ? WHERE input_file_id = ?", (status, input_file_id))

    def batch_reserved_usd(self) -> float:
        """Batches not yet reconciled: counted at worst case, like in-flight requests."""
        return float(self._db.execute(
            "SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE status IN ('uploaded', 'submitted')"
        ).fetchone()[0])

    def close(self) -> None:
        # Writes whose callers were cancelled (a second Ctrl-C) are still made durable.
        if self._pending:
            self._transaction(self._db, [op for op, _ in self._pending])
            self._pending = []
        self._writer.close()
        self._db.close()
