"""Workers: claim a job with a lease, check it again, run it, heartbeat, honour cancels, never write
after losing it.

At claim time the whole config is checked again against the current settings (files move, settings
change), every input file is copied into the run folder through checked descriptors
(`service/inputs.py`), the job is priced by the server, and only then does `run_job` start. The
heartbeat is a thread of its own: a job whose event loop is busy keeps its lease, and a cancel
reaches it within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import Budget
from distilforge.core.redact import redact
from distilforge.core.response_cache import owner_cache_path
from distilforge.pipeline.steps import RunControl
from distilforge.schemas import JobConfig, Prices
from distilforge.service.budgets import Ledger, LedgerBudget, month_scopes
from distilforge.service.db import Job, Schedule
from distilforge.service.inputs import InputRefused, materialise, prepare_run_dir
from distilforge.service.prices import apply_server_prices
from distilforge.service.settings import Settings
from distilforge.service.store import LeaseLost, Store
from distilforge.service.validate import check_job, seeds_over_limit

log = logging.getLogger("distilforge.worker")
LOG_FILE = "job.log"  # in the job's run folder; GET /v1/jobs/{id}/logs reads it

# An absolute path in a message (a folder chain ending in a name): only its last part is shown.
_ABS_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.+@~-]+)+/(?=[\w.+@~-])")


class RedactLogs(logging.Filter):
    """Every record of the service's loggers (and uvicorn's) leaves with secrets and URL credentials
    masked, whatever the message carried (a query string, an exception's text).

    The formatted message is what gets redacted. A record is changed only when it carries a secret, and
    then its arguments keep their shape: uvicorn's access formatter unpacks `record.args` (client, method,
    path, version, status) itself, so emptying them would turn each request's line into a logging error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if redact(message) != message:
            if isinstance(record.args, tuple) and record.args:
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
                record.msg = redact(str(record.msg))
            if redact(record.getMessage()) != record.getMessage() or not isinstance(record.args, tuple):
                record.msg, record.args = redact(message), ()
        if record.exc_info:  # tracebacks are formatted later, from the exception: keep only its redacted text
            exc = record.exc_info[1]
            record.msg = f"{redact(record.getMessage())}: {redact(f'{type(exc).__name__}: {exc}')}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def redact_logs() -> None:
    for name in ("distilforge", "distilforge.worker", "distilforge.scheduler", "distilforge.api", "uvicorn",
                 "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactLogs) for f in logger.filters):
            logger.addFilter(RedactLogs())


def public_text(text: str | None, limit: int = 2000) -> str | None:
    """Text fit for an API answer or a job row: secrets masked, URL credentials removed, absolute server
    paths cut down to their last component."""
    if text is None:
        return None
    return _ABS_PATH.sub("", redact(str(text)))[:limit]


class JobControl(RunControl):
    """Ties a running job to its lease: heartbeats, cancel requests, epoch checks, shared budgets."""

    def __init__(self, store: Store, ledger: Ledger, settings: Settings, job_id: str, epoch: int,
                 schedule_cap: float | None, schedule_id: str | None, owner: str = "default"):
        self.store, self.ledger, self.settings = store, ledger, settings
        self.job_id, self.epoch = job_id, epoch
        self.owner = owner
        self.caps: dict[str, float | None] = {}
        for scope in month_scopes(schedule_id, owner):
            if scope.startswith("global:"):
                self.caps[scope] = settings.monthly_cap_usd
            elif scope.startswith("owner:"):
                self.caps[scope] = settings.owner_caps.get(owner)
            else:
                self.caps[scope] = schedule_cap
        self.prices: Prices | None = None  # the server's prices, set once the config is checked
        self._cancel = False
        self._lost = False
        # The job's wall-clock limit, from this claim: past it the run stops as if cancelled, and ends failed.
        self.deadline = time.monotonic() + settings.limits.job_seconds
        self.timed_out: str | None = None
        self._progress: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        # Its own thread: however busy the job's event loop or training is, the lease is renewed on time.
        interval = max(0.2, self.settings.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self._cancel = self.store.heartbeat(self.job_id, self.epoch, self._progress) or self._cancel
            except LeaseLost:
                self._lost = True
                return
            except Exception as exc:  # a database blip: try again next beat; the lease outlives one miss
                log.warning("heartbeat failed for job %s: %s", self.job_id, public_text(f"{type(exc).__name__}: {exc}"))

    def report(self, progress: dict[str, Any]) -> None:
        self._progress = progress

    def stop_reason(self) -> str | None:
        if self.timed_out is None and time.monotonic() > self.deadline:
            self.timed_out = (f"the job ran past its wall-clock limit of {self.settings.limits.job_seconds:g} s "
                              "(DISTILFORGE_LIMITS_JOB_SECONDS)")
        return "cancelled" if self._cancel or self.timed_out else None

    def lost(self) -> bool:
        return self._lost

    def fence(self) -> int:
        return self.epoch

    def response_cache(self) -> Path | None:
        # One cache per owner: an owner never reads an answer another owner paid for.
        return owner_cache_path(self.owner)

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(f"job {self.job_id}: lease lost")
        self.store.check_lease(self.job_id, self.epoch)

    def budget(self, config: JobConfig, spent: float) -> Budget:
        # Priced by the server (the table plus DISTILFORGE_PRICES), never by the job's own config.
        return LedgerBudget(self.prices, config.budget.max_usd, spent=spent, ledger=self.ledger,
                            caps=self.caps, hold=(self.job_id, self.epoch))


def hub_without_redirects() -> None:
    """The Hub client of this process (publishing, allowed Hub models) follows no redirect. huggingface_hub
    resolves its own Hub-to-CDN hops explicitly (its metadata calls never follow one), so what this stops
    is a redirect the library did not ask for."""
    import huggingface_hub
    from huggingface_hub.utils import _http

    def sync() -> Any:
        client = _http.default_client_factory()
        client.follow_redirects = False
        return client

    def asynchronous() -> Any:
        client = _http.default_async_client_factory()
        client.follow_redirects = False
        return client

    huggingface_hub.set_client_factory(sync)
    huggingface_hub.set_async_client_factory(asynchronous)


def release_memory() -> None:
    """After a job (a cancelled training above all): drop cycles, the CUDA cache and glibc's free arenas,
    so a long-lived worker goes back to its idle size."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # another libc: nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class Worker:
    def __init__(self, store: Store, settings: Settings, owner: str | None = None, poll_seconds: float = 0.5):
        self.store = store
        self.settings = settings
        settings.register_secrets()
        redact_logs()
        hub_without_redirects()
        self.ledger = Ledger(store.sessions)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.poll_seconds = poll_seconds

    def run_once(self) -> bool:
        job = self.store.claim(self.owner)
        if job is None:
            return False
        self._run(job)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.run_once():
                    stop.wait(self.poll_seconds)
            except Exception as exc:
                log.error("worker %s: unexpected error: %s", self.owner, public_text(f"{type(exc).__name__}: {exc}"))
                stop.wait(self.poll_seconds)

    def _prepare(self, job: Job, run_dir: Path, cap: float | None, control: JobControl) -> tuple[JobConfig | None, str | None]:
        """(the config to run, None) or (None, why the job is refused now)."""
        config = JobConfig.model_validate(job.config)
        problems = check_job(config, self.settings, owner=job.owner, schedule_cap=cap, count_seeds=False, stored=True)
        if problems:
            return None, "refused when claimed: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems)
        try:
            prepare_run_dir(run_dir, self.settings)
            config = materialise(config, run_dir, self.settings)
        except InputRefused as exc:
            return None, f"refused when claimed: {exc.loc}: {exc.msg}"
        from distilforge.prompts import PROMPTS_DIR

        # The built-in template by its full path: a file of the same name in the worker's folder is never read.
        config.generation.template = str(PROMPTS_DIR / config.generation.template_name)
        limit = self.settings.limits.seeds
        if config.seeds.limit is None and seeds_over_limit(config.seeds.path, config.seeds.split, limit):
            # Counted here, on the copy, not by the API: a submission does no per-seed work.
            return None, f"refused when claimed: seeds.path: more than {limit} seeds (DISTILFORGE_LIMITS_SEEDS); set seeds.limit"
        # Priced by the server: budget.prices and each judge's prices are the server's (run.json shows them).
        control.prices = apply_server_prices(config, self.settings.prices, self.settings.batch_discounts)
        return config, None

    def _run(self, job: Job) -> None:
        from distilforge.pipeline.lifecycle import run_job

        job_id, epoch = job.id, job.epoch
        run_dir = self.settings.runs_dir / job_id  # chosen by the server, never by the job
        cap = None
        if job.schedule_id:
            with self.store.sessions() as s:
                schedule = s.get(Schedule, job.schedule_id)
                cap = schedule.monthly_cap_usd if schedule else None
        control = JobControl(self.store, self.ledger, self.settings, job_id, epoch, cap, job.schedule_id, job.owner)
        control.start()
        try:
            converted = self.ledger.expire_holds(job_id, epoch)
            if converted:
                log.warning("job %s: %.6f USD held by an expired lease counted as spent (worst case)", job_id, converted)
            if job.cancel_requested:  # cancelled while its last worker held it: it ends here, nothing resumes
                self._finish(job_id, epoch, "cancelled")
                return
            self.store.set_run_dir(job_id, epoch, str(run_dir))
            config, refused = self._prepare(job, run_dir, cap, control)
            if config is None:
                self._finish(job_id, epoch, "failed", error=refused)
                return
            if self.settings.ray_address:  # the cluster runs the ranks; lease, fence and cancel stay here
                executor = config.executor.model_copy(update={"kind": "ray", "address": self.settings.ray_address})
                config = config.model_copy(update={"executor": executor})
            # The job's own log (GET /v1/jobs/{id}/logs): plain lines, a progress line every 10 s.
            with open(run_dir / LOG_FILE, "a", encoding="utf-8") as job_log:
                result = run_job(config, run_dir, control, console=Console(file=job_log, width=120))
            if result.status == "lease_lost" or control.lost():
                return
            state = {"completed": "succeeded", "stopped": "stopped_budget", "cancelled": "cancelled",
                     "interrupted": "cancelled"}.get(result.status, "failed")
            error = (result.run.get("error") or f"the run ended {result.status}") if state == "failed" else None
            if control.timed_out:
                state, error = "failed", control.timed_out
            self._finish(job_id, epoch, state, summary=job_summary(result.run), error=error)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker owns it now", job_id)
        except BaseException as exc:  # the job failed; the worker lives on
            if control.lost():
                return
            state = "cancelled" if control.stop_reason() == "cancelled" and not control.timed_out else "failed"
            self._finish(job_id, epoch, state, error=control.timed_out or f"{type(exc).__name__}: {exc}")
            log.error("job %s %s: %s", job_id, state, public_text(f"{type(exc).__name__}: {exc}"))
        finally:
            control.close()
            release_memory()

    def _finish(self, job_id: str, epoch: int, state: str, *, summary: dict[str, Any] | None = None,
                error: str | None = None) -> None:
        with contextlib.suppress(LeaseLost):
            self.store.finish(job_id, epoch, state, summary=summary, error=public_text(error))
            self.ledger.close_holds(job_id, epoch)


def public_data(value: Any) -> Any:
    """`public_text` over every string of a JSON-like value."""
    if isinstance(value, str):
        return public_text(value, limit=10_000)
    if isinstance(value, dict):
        return {k: public_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_data(v) for v in value]
    return value


def job_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a run: counts and money; no secrets and no server paths."""
    return public_data({k: run.get(k) for k in ("kept", "rejected", "samples", "requests", "tokens", "cost_usd",
                                                "stopped", "wall_seconds", "total_seconds", "mode", "train", "eval",
                                                "published")})


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
