"""The OpenAI Batch API (`teacher.batch_api: true`): half the price, answers within 24 hours.

Flow, before the Generate step replays the journal: collect the samples the journal lacks -> JSONL
files (custom_id = the journal key of the group's first sample), split at `batch_max_requests` rows
and the API's 200 MB -> upload -> create the batch -> poll with backoff -> stream the output files
line by line, committing every answer to the journal -> resubmit failed rows, up to `batch_rounds`
times. Each uploaded file is recorded in the journal before its batch is created, and the batch id
right after: a restarted run polls the batches it finds there (or adopts a batch created just before
a crash, matched by its input file) instead of paying again.

Money goes through the run's Sampler like every other teacher call: each row's worst case (at the
batch discount) is reserved before the file is uploaded and settled to the usage in its answer.
Polling stops within a second of a stop (Ctrl-C, a cancelled job); the batch stays on the server and
the next run picks it up.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilforge.core.seeds import SeedSelection
from distilforge.core.tokens import prompt_tokens_upper_bound
from distilforge.modes import Prompter
from distilforge.pipeline.sources import SeedSource
from distilforge.schemas import JobConfig
from distilforge.teachers.chat_response import response_from_body
from distilforge.teachers.sampler import Sampler

MAX_FILE_BYTES = 190 * 1024 * 1024  # the API takes 200 MB per input file; keep a margin
FINAL = {"completed", "failed", "expired", "cancelled"}


class _Writer:
    """Streams batch lines into part files no larger than the API's limits."""

    def __init__(self, folder: Path, max_rows: int):
        self.folder, self.max_rows = folder, max_rows
        self.parts: list[tuple[Path, dict[str, list[Any]], float]] = []
        self._fh: Any = None

    def _open(self) -> None:
        path = self.folder / f"batch-{len(self.parts):04d}.jsonl"
        self._fh = path.open("w", encoding="utf-8")
        self.parts.append((path, {}, 0.0))
        self._rows = self._bytes = 0

    def add(self, custom_id: str, body: dict[str, Any], group: list[Any], reserved: float) -> None:
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


class BatchRun:
    def __init__(self, config: JobConfig, sampler: Sampler, prompter: Prompter, rank: int, world_size: int,
                 log: Callable[[str], None], *, selection: SeedSelection | None = None, first_sample: int = 0):
        self.config, self.sampler, self.prompter = config, sampler, prompter
        # The Generate step's seeds and sample indices (a targeted round: its targets, new indices; the first
        # pass of a run with `loop:`: every seed but the probe split), so that only what it replays is paid.
        self.selection, self.first_sample = selection, first_sample
        self.rank, self.world_size, self.log = rank, world_size, log
        self.journal, self.budget = sampler.journal, sampler.budget
        self.discount = config.budget.batch_discount
        self.client: Any = sampler.teacher.batch_client()  # type: ignore[attr-defined]
        self.report: dict[str, Any] = {"batches": [], "rows_ok": 0, "rows_failed": 0}

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        return self.sampler.cost(prompt_tokens, completion_tokens, cached_tokens) * self.discount

    async def _sleep(self, seconds: float) -> bool:
        """Sleep in short steps; False as soon as the run is told to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.sampler.stopped:
                return False
            await asyncio.sleep(min(1.0, deadline - time.monotonic()))
        return not self.sampler.stopped

    async def _submit(self, path: Path, groups: dict[str, Any], reserved: float) -> str:
        with path.open("rb") as fh:
            uploaded = await self.client.files.create(file=(path.name, fh), purpose="batch")
        await asyncio.to_thread(self.journal.add_batch, uploaded.id, groups, reserved)  # before the batch exists
        batch = await self.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                 completion_window="24h", metadata={"source": "distilforge"})
        await asyncio.to_thread(self.journal.batch_created, uploaded.id, batch.id)
        return uploaded.id

    async def _adopt_or_create(self, row: dict[str, Any]) -> None:
        """A file uploaded before a crash: find its batch if one was created, else create it now."""
        async for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == row["input_file_id"]:
                break
        else:
            batch = await self.client.batches.create(input_file_id=row["input_file_id"], endpoint="/v1/chat/completions",
                                                     completion_window="24h", metadata={"source": "distilforge"})
        await asyncio.to_thread(self.journal.batch_created, row["input_file_id"], batch.id)
        row["batch_id"] = batch.id

    async def _wait(self, batch_id: str) -> Any | None:
        first = self.config.teacher.batch_poll_seconds
        delay = first
        while True:
            batch = await self.client.batches.retrieve(batch_id)
            if batch.status in FINAL:
                return batch
            counts = batch.request_counts
            done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
            self.log(f"batch {batch_id}: {batch.status}, {done} done; next poll in {delay:.0f} s")
            if not await self._sleep(delay):
                return None
            delay = min(delay * 1.5, first * 10)

    async def _lines(self, file_id: str | None) -> Any:
        """The lines of an output file, streamed (an output file can be gigabytes)."""
        if not file_id:
            return
        async with self.client.files.with_streaming_response.content(file_id) as response:
            async for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    async def _collect(self, batch: Any, row: dict[str, Any]) -> tuple[int, int]:
        """Commit answers, dead-letter errors; returns (ok rows, failed rows)."""
        groups: dict[str, list[Any]] = row["groups"]
        stats = self.sampler.stats
        ok = failed = 0
        actual = 0.0
        seen: set[str] = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            async for line in self._lines(file_id):
                cid = line.get("custom_id")
                if cid not in groups or cid in seen:
                    continue
                seen.add(cid)
                seed_id, pairs = groups[cid][0], [(k, i) for k, i in groups[cid][1]]
                response, error = line.get("response") or {}, line.get("error")
                body = response.get("body") or {}
                if error or response.get("status_code") != 200 or not body.get("choices"):
                    message = (error or {}).get("message") or (body.get("error") or {}).get("message") or "no answer"
                    await self.journal.fail_async(seed_id, pairs, f"batch {batch.id}: {response.get('status_code')}: "
                                                                  f"{message}", True)
                    failed += 1
                    continue
                resp = response_from_body(body, self.config.teacher.model, self.config.teacher.opens_thinking)
                resp.completions = resp.completions[: len(pairs)]
                if not resp.usage_reported:
                    stats.usage_missing += 1
                    cost = groups[cid][2] if len(groups[cid]) > 2 else row["reserved_usd"] / len(groups)  # never 0
                else:
                    cost = self.cost(resp.prompt_tokens, resp.completion_tokens, resp.cached_tokens)
                await self.journal.commit_async(seed_id, pairs[: len(resp.completions)], resp, cost_usd=cost)
                actual += cost
                stats.prompt_tokens += resp.prompt_tokens
                stats.completion_tokens += resp.completion_tokens
                stats.reasoning_tokens += resp.reasoning_tokens
                stats.cached_prompt_tokens += resp.cached_tokens
                ok += 1
        for cid in set(groups) - seen:  # expired or cancelled before these rows ran
            seed_id, pairs = groups[cid][0], [(k, i) for k, i in groups[cid][1]]
            await self.journal.fail_async(seed_id, pairs, f"batch {batch.id}: {batch.status} before this row ran", True)
            failed += 1
        await asyncio.to_thread(self.journal.close_batch, row["input_file_id"], batch.status)
        await self.budget.settle(row["reserved_usd"], actual, self.sampler.stage)
        return ok, failed

    async def _write_round(self, folder: Path) -> list[tuple[Path, dict[str, Any], float]]:
        """Batch files for every sample of the rank's seeds that the journal lacks, each reserved first."""
        t, g = self.config.teacher, self.config.generation
        writer = _Writer(folder, t.batch_max_requests)
        n_per = g.samples_per_seed if t.supports_n else 1
        first = self.first_sample
        for seed in SeedSource(self.config, self.selection).read(self.rank, self.world_size):
            messages, _ = self.prompter.build(seed)
            keys = self.sampler.keys(messages, range(first, first + g.samples_per_seed))
            found = await self.journal.lookup_async([k for k, _ in keys])
            missing = [(k, i) for k, i in keys if k not in found]
            for start in range(0, len(missing), n_per):
                chunk = missing[start : start + n_per]
                reserve = self.cost(prompt_tokens_upper_bound(messages), t.completion_budget() * len(chunk))
                if not await self.budget.reserve(reserve):
                    self.sampler.stop("budget")
                    self.sampler.on_budget("budget")
                    break
                body = self.sampler.teacher.request_body(messages, len(chunk))  # type: ignore[attr-defined]
                writer.add(chunk[0][0], body, [seed.seed_id, [list(pair) for pair in chunk], reserve], reserve)
            if self.sampler.stopped:
                break
        writer.close()
        return writer.parts

    async def run(self) -> dict[str, Any]:
        """Fill the journal through the Batch API; the Generate step then replays it (journal only)."""
        t = self.config.teacher
        stats = self.sampler.stats
        started = time.monotonic()
        # Batches of an earlier run are on the server: the journal counted them as spent at worst
        # case; they become reservations again until their answers settle them.
        pending = self.journal.open_batches()
        for row in pending:
            self.budget.spent -= row["reserved_usd"]
            self.budget.reserved += row["reserved_usd"]
        stats.first_request = stats.first_request or time.time()
        for round_no in range(t.batch_rounds + 1):
            for row in pending:
                if row["status"] == "uploaded":
                    await self._adopt_or_create(row)
                batch = await self._wait(row["batch_id"])
                if batch is None:  # told to stop: the batch stays open for the next run
                    self.report["seconds"] = round(time.monotonic() - started, 2)
                    return self.report
                ok, failed = await self._collect(batch, row)
                stats.sent += ok + failed
                stats.succeeded += ok
                stats.failed += failed
                self.report["rows_ok"] += ok
                self.report["rows_failed"] += failed
                self.report["batches"].append({"id": batch.id, "status": batch.status, "ok": ok, "failed": failed})
            if round_no == t.batch_rounds or self.sampler.stopped:
                break
            with tempfile.TemporaryDirectory(prefix="batch-", dir=self.journal.path.parent) as tmp:
                parts = await self._write_round(Path(tmp))
                pending = []
                for path, groups, reserved in parts:
                    file_id = await self._submit(path, groups, reserved)
                    pending.append(next(r for r in self.journal.open_batches() if r["input_file_id"] == file_id))
            if not pending:
                break
            self.log(f"batch round {round_no + 1}: {sum(len(r['groups']) for r in pending)} requests "
                     f"in {len(pending)} batch(es)")
        stats.last_done = time.time()
        self.report["seconds"] = round(time.monotonic() - started, 2)
        return self.report
