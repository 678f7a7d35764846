"""The request journal: every teacher answer is committed to SQLite before it is used.

Keyed by the logical request (teacher model and sampling params, messages, sample index) rather than
the endpoint it went to, so a rerun on the same run folder reuses every answer already paid for and
only asks again for what was in flight when the previous run stopped. Each rank of a run has its
own journal file (`journal/rank-NNNNN.sqlite`); a seed always lands on the same rank.

Tables:
- `responses`: one row per sample, with its share of the tokens and cost.
- `inflight`: a row per attempt, written *before* it is sent with its worst-case cost, and deleted in
  the transaction that settles it. Rows left by a crashed run are orphans: their cost is unknown,
  so every later run counts them at worst case.
- `charges`: attempts whose outcome is unknown (timeout, dropped connection, unreadable body), which
  may have been billed: kept at worst case, like orphans, so spend after a crash is known.
- `dead_letters`: requests that failed after all retries (history; a rerun asks again).
- `batches`: OpenAI Batch API jobs, so a restart polls a submitted batch instead of paying again.
- `meta`: the fencing epoch. A service worker writes its lease epoch when it claims the job; every
  write transaction checks it, so a worker that lost its lease cannot write a single row more.

Whatever reads a run folder's journals afterwards (reports, tests) goes through `JournalReader`, read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilforge.core.reasoning import split_reasoning
from distilforge.schemas.records import Completion, TeacherResponse

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
    cost_usd REAL NOT NULL DEFAULT 0,
    reasoning TEXT,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inflight (
    request_id TEXT PRIMARY KEY,
    seed_id TEXT NOT NULL,
    keys TEXT NOT NULL,
    reserved_usd REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    request_id TEXT PRIMARY KEY,
    seed_id TEXT NOT NULL,
    usd REAL NOT NULL,
    kind TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

Found = tuple[Completion, int, int, str]
Op = Callable[[sqlite3.Connection], Any]


class FencedOut(RuntimeError):
    """A newer lease epoch owns this journal: the write was refused and rolled back."""


def key_json(value: Any) -> str:
    """How a part of a key is encoded: `json.dumps` with sorted keys. These bytes are what every journal
    and response cache was keyed by, so they never change (not orjson, not compact separators)."""
    return _KEY_ENCODER.encode(value)


_KEY_ENCODER = json.JSONEncoder(sort_keys=True)  # what json.dumps(value, sort_keys=True) builds per call


def key_blobs(parts: dict[str, str], indices: range | list[int]) -> list[bytes]:
    """`key_json({**parts, "i": index})` for each index, from parts already encoded with `key_json`:
    a prompt's samples share its encoding (and a sampler its teacher's) instead of encoding it again."""
    names = sorted([*parts, "i"])
    at = names.index("i")
    head = "{" + "".join(f'"{n}": {parts[n]}, ' for n in names[:at]) + '"i": '
    tail = "".join(f', "{n}": {parts[n]}' for n in names[at + 1:]) + "}"
    return [(head + (str(i) if type(i) is int else key_json(i)) + tail).encode() for i in indices]


def request_keys(identity_json: str, messages: list[dict[str, str]], indices: range | list[int]) -> list[str]:
    """The journal keys of a prompt's samples; `identity_json` is `key_json(teacher identity)`."""
    blobs = key_blobs({"t": identity_json, "m": key_json(messages)}, indices)
    return [hashlib.sha256(blob).hexdigest() for blob in blobs]


def request_key(teacher_identity: dict[str, Any], messages: list[dict[str, str]], sample_index: int) -> str:
    return request_keys(key_json(teacher_identity), messages, [sample_index])[0]


def _split(total: int | float, n: int, j: int) -> Any:
    if isinstance(total, float):
        return total / n
    return total // n + (1 if j < total % n else 0)


def _stored_completion(text: str, finish_reason: str | None, reasoning: str | None,
                       reasoning_tokens: int | None) -> Completion:
    if reasoning is None:  # an answer stored before traces were split out: split it now
        text, reasoning = split_reasoning(text)
    return Completion(text, finish_reason, reasoning, int(reasoning_tokens or 0))


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=10000")
    # NORMAL in WAL mode survives a process crash (the case we guard); fsync waits for checkpoints.
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _add_reasoning_columns(db: sqlite3.Connection) -> None:
    """A journal written before reasoning teachers were supported gets their columns (empty)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
    for column, kind in (("reasoning", "TEXT"), ("reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
                         ("cached_tokens", "INTEGER NOT NULL DEFAULT 0")):
        if column not in have:
            with contextlib.suppress(sqlite3.OperationalError):  # another rank added it meanwhile
                db.execute(f"ALTER TABLE responses ADD COLUMN {column} {kind}")


class Journal:
    def __init__(self, path: Path, fence: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        _add_reasoning_columns(self._db)
        self._read_lock = threading.Lock()
        self.fence = fence
        if fence is not None:
            self._claim(fence)
        # Group commit: writes from the event loop queue up and a writer thread commits them
        # together, one transaction per round, on its own connection (SQLite releases the GIL).
        self._writer = _connect(path)
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Reads from the event loop go to one thread too, so a lookup never blocks the loop.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-read")

    # -- fencing -------------------------------------------------------------------------------
    def _claim(self, epoch: int) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (epoch,))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'epoch' AND value < ?", (epoch, epoch))
            current = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if current != epoch:
            raise FencedOut(f"{self.path}: lease epoch {epoch} is older than the journal's {current}")

    def _check_fence(self, conn: sqlite3.Connection) -> None:
        if self.fence is None:
            return
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None or row[0] != self.fence:
            raise FencedOut(f"{self.path}: lease epoch {self.fence} is no longer current")

    # -- reads ---------------------------------------------------------------------------------
    def _query(self, sql: str, args: Any = ()) -> list[Any]:
        with self._read_lock:
            return self._db.execute(sql, args).fetchall()

    def lookup(self, keys: list[str]) -> dict[str, Found]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._query("SELECT key, text, finish_reason, prompt_tokens, completion_tokens, model, reasoning, "
                           f"reasoning_tokens FROM responses WHERE key IN ({marks})", keys)
        return {r[0]: (_stored_completion(r[1], r[2], r[6], r[7]), r[3], r[4], r[5]) for r in rows}

    async def lookup_async(self, keys: list[str]) -> dict[str, Found]:
        if not keys:
            return {}
        return await asyncio.get_running_loop().run_in_executor(self._reader, self.lookup, keys)

    def dead_letter_errors(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        return dict(self._query(f"SELECT key, error FROM dead_letters WHERE key IN ({marks})", keys))

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM responses")[0][0])

    def spent_usd(self) -> float:
        """Settled cost of every answer, plus unknown outcomes and orphaned reservations at worst case."""
        paid = self._query("SELECT COALESCE(SUM(cost_usd), 0) FROM responses")[0][0]
        charged = self._query("SELECT COALESCE(SUM(usd), 0) FROM charges")[0][0]
        return float(paid) + float(charged) + self.orphaned_usd() + self.batch_reserved_usd()

    def orphaned_usd(self) -> float:
        return float(self._query("SELECT COALESCE(SUM(reserved_usd), 0) FROM inflight")[0][0])

    def orphan_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM inflight")[0][0])

    # -- writes --------------------------------------------------------------------------------
    def _transaction(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._check_fence(conn)
            for op in ops:
                results.append(op(conn))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    def _apply(self, op: Op) -> Any:
        """Run one write now, in its own transaction (the synchronous path)."""
        with self._read_lock:
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
            comp.reasoning_tokens = _split(response.reasoning_tokens, n, j)  # each sample's share, like p and c
            rows.append((key, seed_id, index, comp.text, comp.finish_reason, p, c, response.model, now,
                         _split(float(cost_usd), n, j), comp.reasoning, comp.reasoning_tokens,
                         _split(response.cached_tokens, n, j)))

        def op(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            conn.executemany("INSERT OR REPLACE INTO responses (key, seed_id, sample_index, text, finish_reason, "
                             "prompt_tokens, completion_tokens, model, created, cost_usd, reasoning, "
                             "reasoning_tokens, cached_tokens) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            conn.executemany("DELETE FROM dead_letters WHERE key = ?", [(r[0],) for r in rows])
            if request_id is not None:
                conn.execute("DELETE FROM inflight WHERE request_id = ?", (request_id,))
            return shares

        return op

    @staticmethod
    def _charge_op(request_id: str, seed_id: str, usd: float, kind: str) -> Op:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM inflight WHERE request_id = ?", (request_id,))
            conn.execute("INSERT OR REPLACE INTO charges VALUES (?,?,?,?,?)", (request_id, seed_id, usd, kind, time.time()))

        return op

    @staticmethod
    def _release_op(request_id: str) -> Op:
        return lambda conn: conn.execute("DELETE FROM inflight WHERE request_id = ?", (request_id,))

    @staticmethod
    def _fail_op(seed_id: str, keys_and_indices: list[tuple[str, int]], error: str, retryable: bool) -> Op:
        now = time.time()
        rows = [(key, seed_id, index, error, int(retryable), now) for key, index in keys_and_indices]
        return lambda conn: conn.executemany("INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?,?,?)", rows)

    async def begin_async(self, request_id: str, seed_id: str, keys: list[str], reserved_usd: float) -> None:
        """Persist a reservation before the request goes out."""
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

    async def charge_async(self, request_id: str, seed_id: str, usd: float, kind: str) -> None:
        """An attempt whose outcome is unknown: its reservation becomes a worst-case charge."""
        await self._submit(self._charge_op(request_id, seed_id, usd, kind))

    async def release_async(self, request_id: str) -> None:
        """An attempt the server refused (nothing billed): its reservation closes."""
        await self._submit(self._release_op(request_id))

    def fail(self, seed_id: str, keys_and_indices: list[tuple[str, int]], error: str, retryable: bool) -> None:
        self._apply(self._fail_op(seed_id, keys_and_indices, error, retryable))

    async def fail_async(self, seed_id: str, keys_and_indices: list[tuple[str, int]], error: str,
                         retryable: bool) -> None:
        await self._submit(self._fail_op(seed_id, keys_and_indices, error, retryable))

    # -- Batch API -----------------------------------------------------------------------------
    # A batch row is written when its file is uploaded (status 'uploaded', keyed by the file id) and
    # updated with the batch id once created; a crash in between is healed by matching the file id.
    def add_batch(self, input_file_id: str, groups: dict[str, Any], reserved_usd: float) -> None:
        row = (input_file_id, input_file_id, json.dumps(groups), reserved_usd, "uploaded", time.time())
        self._apply(lambda conn: conn.execute("INSERT INTO batches VALUES (?,?,?,?,?,?)", row))

    def batch_created(self, input_file_id: str, batch_id: str) -> None:
        self._apply(lambda conn: conn.execute(
            "UPDATE batches SET batch_id = ?, status = 'submitted' WHERE input_file_id = ?", (batch_id, input_file_id)))

    def open_batches(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT batch_id, input_file_id, keys, reserved_usd, status FROM batches "
                           "WHERE status IN ('uploaded', 'submitted') ORDER BY created")
        return [{"batch_id": r[0], "input_file_id": r[1], "groups": json.loads(r[2]), "reserved_usd": r[3],
                 "status": r[4]} for r in rows]

    def close_batch(self, input_file_id: str, status: str) -> None:
        self._apply(lambda conn: conn.execute("UPDATE batches SET status = ? WHERE input_file_id = ?",
                                              (status, input_file_id)))

    def batch_reserved_usd(self) -> float:
        """Batches not yet reconciled: counted at worst case, like in-flight requests."""
        return float(self._query(
            "SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE status IN ('uploaded', 'submitted')")[0][0])

    def close(self) -> None:
        # Writes whose callers were cancelled (a second Ctrl-C) are still made durable, unless fenced.
        if self._pending:
            with contextlib.suppress(FencedOut):
                self._apply_all([op for op, _ in self._pending])
            self._pending = []
        self._reader.shutdown(wait=True)
        self._writer.close()
        self._db.close()

    def _apply_all(self, ops: list[Op]) -> None:
        with self._read_lock:
            self._transaction(self._db, ops)


def journal_totals(run_dir: Path) -> tuple[float, int]:
    """(spent, orphaned requests) over every journal shard of a run folder, read without writing."""
    totals = JournalReader(run_dir).totals()
    return totals.spent_usd, totals.orphans


TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached_prompt")


def journal_tokens(run_dir: Path) -> dict[str, int]:
    """Tokens of every answer in every journal shard, the folder's whole usage: prompt, completion, and
    the reasoning (part of completion) and cached prompt (part of prompt) tokens the server reported."""
    return JournalReader(run_dir).totals().tokens


# -- reading a run folder's journals ---------------------------------------------------------------
# Reports and tests read what a run recorded through these, never through the tables: the schema stays
# the journal's own business (a shard written before a table or column existed reads as empty or zero).


@dataclass(frozen=True)
class Answer:
    """One sample's committed answer (a `responses` row) with its share of the tokens and cost."""

    seed_id: str
    sample_index: int
    model: str
    finish_reason: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Reservation:
    """An attempt persisted before it was sent and not yet settled: an orphan once its run is dead."""

    request_id: str
    seed_id: str
    reserved_usd: float


@dataclass(frozen=True)
class Charge:
    """An attempt with an unknown outcome, kept at worst case (`kind`: timeout, connection, ...)."""

    request_id: str
    seed_id: str
    usd: float
    kind: str


@dataclass(frozen=True)
class DeadLetter:
    """A sample that failed after every retry."""

    seed_id: str
    sample_index: int
    error: str
    retryable: bool


@dataclass(frozen=True)
class BatchJob:
    """A Batch API job; `open` while uploaded or submitted (its reservation still counts)."""

    batch_id: str
    input_file_id: str
    reserved_usd: float
    status: str

    @property
    def open(self) -> bool:
        return self.status in ("uploaded", "submitted")


@dataclass
class JournalTotals:
    """Sums over every shard: what the answers cost, what is charged or reserved at worst case, tokens."""

    answers: int = 0
    answered_usd: float = 0.0
    charged_usd: float = 0.0
    orphans: int = 0
    orphaned_usd: float = 0.0
    batch_reserved_usd: float = 0.0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))

    @property
    def spent_usd(self) -> float:
        """What the folder spent or may have: answers, unknown outcomes, orphans and open batches."""
        return self.answered_usd + self.charged_usd + self.orphaned_usd + self.batch_reserved_usd


_ANSWER_COLUMNS = ("seed_id", "sample_index", "model", "finish_reason", "cost_usd", "prompt_tokens",
                   "completion_tokens", "reasoning_tokens", "cached_tokens")
_TOTALS_SQL = {
    "responses": "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(prompt_tokens), 0), "
                 "COALESCE(SUM(completion_tokens), 0), {reasoning}, {cached} FROM responses",
    "charges": "SELECT COALESCE(SUM(usd), 0) FROM charges",
    "inflight": "SELECT COUNT(*), COALESCE(SUM(reserved_usd), 0) FROM inflight",
    "batches": "SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE status IN ('uploaded', 'submitted')",
}


class JournalReader:
    """Every journal shard of a run folder, read-only: answers, reservations, charges, dead letters,
    batches, fencing epochs and totals. Each call opens the shards as they are now (a live writer's
    committed rows and a killed one's WAL included), creates nothing and writes nothing."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @property
    def paths(self) -> list[Path]:
        return journal_paths(self.run_dir)  # looked up per call: shards appear as ranks start

    def _shards(self) -> Iterator[tuple[sqlite3.Connection, dict[str, set[str]]]]:
        """Each shard's read-only connection and its tables' columns."""
        for path in self.paths:
            db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
            try:
                tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                yield db, {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
            finally:
                db.close()

    def _rows(self, table: str, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
        for db, schema in self._shards():
            if table in schema:  # a column added later reads as 0 in an older shard
                select = ", ".join(c if c in schema[table] else "0" for c in columns)
                yield from db.execute(f"SELECT {select} FROM {table} ORDER BY rowid")

    def answers(self) -> Iterator[Answer]:
        for row in self._rows("responses", _ANSWER_COLUMNS):
            yield Answer(str(row[0]), int(row[1]), *row[2:4], float(row[4]), *(int(v or 0) for v in row[5:]))

    def reservations(self) -> Iterator[Reservation]:
        for request_id, seed_id, usd in self._rows("inflight", ("request_id", "seed_id", "reserved_usd")):
            yield Reservation(request_id, seed_id, float(usd))

    def charges(self) -> Iterator[Charge]:
        for request_id, seed_id, usd, kind in self._rows("charges", ("request_id", "seed_id", "usd", "kind")):
            yield Charge(request_id, seed_id, float(usd), kind)

    def dead_letters(self) -> Iterator[DeadLetter]:
        for seed_id, index, error, retryable in self._rows(
                "dead_letters", ("seed_id", "sample_index", "error", "retryable")):
            yield DeadLetter(seed_id, int(index), error, bool(retryable))

    def batches(self) -> Iterator[BatchJob]:
        for batch_id, file_id, usd, status in self._rows(
                "batches", ("batch_id", "input_file_id", "reserved_usd", "status")):
            yield BatchJob(batch_id, file_id, float(usd), status)

    def epochs(self) -> list[int | None]:
        """Each shard's fencing epoch (None: never claimed by a service worker), in `paths` order."""
        found: list[int | None] = []
        for db, schema in self._shards():
            row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone() if "meta" in schema else None
            found.append(None if row is None else int(row[0]))
        return found

    def totals(self) -> JournalTotals:
        totals = JournalTotals()
        for db, schema in self._shards():
            if "responses" in schema:
                have = schema["responses"]
                sql = _TOTALS_SQL["responses"].format(
                    reasoning="COALESCE(SUM(reasoning_tokens), 0)" if "reasoning_tokens" in have else "0",
                    cached="COALESCE(SUM(cached_tokens), 0)" if "cached_tokens" in have else "0")
                n, usd, *tokens = db.execute(sql).fetchone()
                totals.answers += int(n)
                totals.answered_usd += float(usd)
                for kind, value in zip(TOKEN_KINDS, tokens, strict=True):
                    totals.tokens[kind] += int(value)
            if "charges" in schema:
                totals.charged_usd += float(db.execute(_TOTALS_SQL["charges"]).fetchone()[0])
            if "inflight" in schema:
                n, usd = db.execute(_TOTALS_SQL["inflight"]).fetchone()
                totals.orphans += int(n)
                totals.orphaned_usd += float(usd)
            if "batches" in schema:
                totals.batch_reserved_usd += float(db.execute(_TOTALS_SQL["batches"]).fetchone()[0])
        return totals


def journal_paths(run_dir: Path) -> list[Path]:
    """Every journal shard of a run folder (and the single-file journal of older runs)."""
    paths = sorted((run_dir / "journal").glob("rank-*.sqlite")) if (run_dir / "journal").is_dir() else []
    legacy = run_dir / "journal.sqlite"
    return [*paths, legacy] if legacy.exists() else paths


def shard_path(run_dir: Path, rank: int) -> Path:
    return run_dir / "journal" / f"rank-{rank:05d}.sqlite"
