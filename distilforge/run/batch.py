"""The OpenAI Batch API (`teacher.batch: true`): half the price, answers within 24 hours.

Flow: collect the samples the journal lacks -> JSONL files (custom_id = the journal key of the
group's first sample), split at `batch_max_requests` rows and the API's 200 MB -> upload -> create
the batch -> poll with backoff -> commit every answer to the journal -> resubmit failed rows, up to
`batch_rounds` times. Each uploaded file is recorded in the journal before its batch is created, and
the batch id right after: a restarted run polls the batches it finds there (or adopts a batch created
just before a crash, matched by its input file) instead of paying again.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import Budget
from distilforge.core.config import JobConfig
from distilforge.core.journal import Journal, request_key
from distilforge.core.seeds import read_seeds
from distilforge.core.tokens import prompt_tokens_upper_bound
from distilforge.modes.generate import Generate
from distilforge.teachers.base import Completion, TeacherResponse

MAX_FILE_BYTES = 190 * 1024 * 1024  # the API takes 200 MB per input file; keep a margin
FINAL = {"completed", "failed", "expired", "cancelled"}




class _Writer:
    """Streams batch lines into part files no larger than the API's limits."""

    def __init__(self, folder: Path, max_rows: int):
        self.folder, self.max_rows = folder, max_rows
        self.parts: list[tuple[Path, dict[str, list[list[Any]]], float]] = []
        self._fh: Any = None

    def _open(self) -> None:
        path = self.folder / f"batch-{len(self.parts):04d}.jsonl"
        self._fh = path.open("w", encoding="utf-8")
        self.parts.append((path, {}, 0.0))
        self._rows = self._bytes = 0

    def add(self, custom_id: str, body: dict[str, Any], group: list[list[Any]], reserved: float) -> None:
        line = json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
        size = len(line.encode())
        if self._fh is None or self._rows >= self.max_rows or self._bytes + size > MAX_FILE_BYTES:
            self.close()
            self._open()
        self._fh.write(line)
        self._rows += 1
        self._bytes += size
        path, groups, total = self.parts[-1]
        groups[custom_id] = group
        self.parts[-1] = (path, groups, total + reserved)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def _submit(client: Any, journal: Journal, path: Path, groups: dict[str, Any], reserved: float) -> str:
    with path.open("rb") as fh:
        uploaded = await client.files.create(file=(path.name, fh), purpose="batch")
    journal.add_batch(uploaded.id, groups, reserved)  # before the batch exists: see the module docstring
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"source": "distilforge"})
    journal.batch_created(uploaded.id, batch.id)
    return uploaded.id


async def _adopt_or_create(client: Any, journal: Journal, row: dict[str, Any]) -> None:
    """A file uploaded before a crash: find its batch if one was created, else create it now."""
    async for batch in client.batches.list(limit=100):
        if batch.input_file_id == row["input_file_id"]:
            journal.batch_created(row["input_file_id"], batch.id)
            row["batch_id"] = batch.id
            return
    batch = await client.batches.create(input_file_id=row["input_file_id"], endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"source": "distilforge"})
    journal.batch_created(row["input_file_id"], batch.id)
    row["batch_id"] = batch.id


async def _wait(client: Any, batch_id: str, first_poll: float, console: Console) -> Any:
    delay = first_poll
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        counts = batch.request_counts
        done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
        console.print(f"[dim]batch {batch_id}: {batch.status}, {done} done; next poll in {delay:.0f} s[/dim]")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, first_poll * 10)


async def _file_lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines() if line.strip()]


def _collect(batch: Any, lines: list[dict[str, Any]], row: dict[str, Any], journal: Journal, budget: Budget,
             model: str) -> tuple[int, int, int, int]:
    """Commit answers, dead-letter errors; returns (ok rows, failed rows, prompt tokens, completion tokens)."""
    groups: dict[str, list[list[Any]]] = row["groups"]
    ok = failed = p_total = c_total = 0
    actual = 0.0
    seen: set[str] = set()
    for line in lines:
        cid = line.get("custom_id")
        if cid not in groups:
            continue
        seen.add(cid)
        seed_id, pairs = groups[cid][0], [(k, i) for k, i in groups[cid][1]]
        response, error = line.get("response") or {}, line.get("error")
        body = response.get("body") or {}
        if error or response.get("status_code") != 200 or not body.get("choices"):
            message = (error or {}).get("message") or (body.get("error") or {}).get("message") or "no answer"
            journal.fail(None, seed_id, pairs, f"batch {batch.id}: {response.get('status_code')}: {message}", True)
            failed += 1
            continue
        usage = body.get("usage") or {}
        completions = [Completion((c.get("message") or {}).get("content") or "", c.get("finish_reason"))
                       for c in sorted(body["choices"], key=lambda c: c.get("index", 0))]
        resp = TeacherResponse(completions[: len(pairs)], int(usage.get("prompt_tokens", 0)),
                               int(usage.get("completion_tokens", 0)), body.get("model") or model)
        cost = budget.cost(resp.prompt_tokens, resp.completion_tokens)
        journal.commit(seed_id, pairs[: len(resp.completions)], resp, cost_usd=cost)
        actual += cost
        p_total += resp.prompt_tokens
        c_total += resp.completion_tokens
        ok += 1
    for cid in set(groups) - seen:  # expired or cancelled before these rows ran
        seed_id, pairs = groups[cid][0], [(k, i) for k, i in groups[cid][1]]
        journal.fail(None, seed_id, pairs, f"batch {batch.id}: {batch.status} before this row ran", True)
        failed += 1
    journal.close_batch(row["input_file_id"], batch.status)
    budget.settle(row["reserved_usd"], actual)
    return ok, failed, p_total, c_total


async def run_batches(config: JobConfig, teacher: Any, journal: Journal, budget: Budget, generate: Generate,
                      console: Console) -> dict[str, Any]:
    """Fill the journal through the Batch API; the Generate step then replays it (journal only)."""
    client = teacher.endpoints[0].client
    t, g = config.teacher, config.generation
    report: dict[str, Any] = {"batches": [], "rows_ok": 0, "rows_failed": 0}
    started = time.monotonic()
    # Batches from an earlier run are in flight (or done) on the server: wait for them first. The
    # budget counted them as spent at worst case; they become reservations again until settled.
    pending = journal.open_batches()
    for row in pending:
        budget.spent -= row["reserved_usd"]
        budget.reserved += row["reserved_usd"]
    loop = asyncio.get_running_loop()
    generate.stats.first_request = loop.time()
    for round_no in range(t.batch_rounds + 1):
        for row in pending:
            if row["status"] == "uploaded":
                await _adopt_or_create(client, journal, row)
            batch = await _wait(client, row["batch_id"], t.batch_poll_seconds, console)
            lines = await _file_lines(client, batch.output_file_id) + await _file_lines(client, batch.error_file_id)
            ok, failed, p, c = _collect(batch, lines, row, journal, budget, t.model)
            generate.stats.requests_sent += ok + failed
            generate.stats.requests_succeeded += ok
            generate.stats.requests_failed += failed
            generate.stats.prompt_tokens += p
            generate.stats.completion_tokens += c
            report["rows_ok"] += ok
            report["rows_failed"] += failed
            report["batches"].append({"id": batch.id, "status": batch.status, "ok": ok, "failed": failed})
        if round_no == t.batch_rounds or generate.stopped:
            break
        with tempfile.TemporaryDirectory(prefix="batch-", dir=journal.path.parent) as tmp:
            writer = _Writer(Path(tmp), t.batch_max_requests)
            n_per = g.samples_per_seed if t.supports_n else 1
            for seed in read_seeds(config.seeds.path, config.seeds.fields, limit=config.seeds.limit,
                                   answer_type=g.answer_type, split=config.seeds.split, subset=config.seeds.subset):
                messages, _ = generate.prompter.build(seed)
                keys = [(request_key(generate.identity, messages, i), i) for i in range(g.samples_per_seed)]
                found = journal.lookup([k for k, _ in keys])
                missing = [(k, i) for k, i in keys if k not in found]
                for start in range(0, len(missing), n_per):
                    chunk = missing[start : start + n_per]
                    reserve = budget.cost(prompt_tokens_upper_bound(messages), t.completion_budget() * len(chunk))
                    if not budget.try_reserve(reserve):
                        generate.stop("budget")
                        break
                    writer.add(chunk[0][0], teacher.request_body(messages, len(chunk)),
                               [seed.seed_id, [list(pair) for pair in chunk]], reserve)
                if generate.stopped:
                    break
            writer.close()
            pending = []
            for path, groups, reserved in writer.parts:
                file_id = await _submit(client, journal, path, groups, reserved)
                pending.append(next(r for r in journal.open_batches() if r["input_file_id"] == file_id))
        if not pending:
            break
        console.print(f"[dim]batch round {round_no + 1}: {sum(len(r['groups']) for r in pending)} requests "
                      f"in {len(pending)} batch(es)[/dim]")
    generate.stats.last_response = loop.time()
    report["seconds"] = round(time.monotonic() - started, 2)
    return report
