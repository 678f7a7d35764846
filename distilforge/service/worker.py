"""Workers: claim a job with a lease, run it, heartbeat, honour cancels, never write after losing it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import Budget
from distilforge.core.config import JobConfig
from distilforge.core.prices import resolve_prices
from distilforge.core.steps import RunControl
from distilforge.service.budgets import Ledger, LedgerBudget, month_scopes
from distilforge.service.db import Schedule
from distilforge.service.settings import Settings
from distilforge.service.store import LeaseLost, Store

log = logging.getLogger("distilforge.worker")


class JobControl(RunControl):
    """Ties a running job to its lease: heartbeats, cancel requests, epoch checks, shared budgets."""

    def __init__(self, store: Store, ledger: Ledger, settings: Settings, job_id: str, epoch: int,
                 schedule_cap: float | None, schedule_id: str | None):
        self.store, self.ledger, self.settings = store, ledger, settings
        self.job_id, self.epoch = job_id, epoch
        self.caps: dict[str, float | None] = {}
        scopes = month_scopes(schedule_id)
        self.caps[scopes[0]] = settings.monthly_cap_usd
        if schedule_id:
            self.caps[scopes[1]] = schedule_cap
        self._cancel = False
        self._lost = False
        self._progress: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        interval = max(0.2, self.settings.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self._cancel = self.store.heartbeat(self.job_id, self.epoch, self._progress) or self._cancel
            except LeaseLost:
                self._lost = True
                return
            except Exception:  # a database blip: try again next beat; the lease outlives one miss
                log.warning("heartbeat failed for job %s", self.job_id, exc_info=True)

    def report(self, progress: dict[str, Any]) -> None:
        self._progress = progress

    def stop_reason(self) -> str | None:
        return "cancelled" if self._cancel else None

    def lost(self) -> bool:
        return self._lost

    def fence(self) -> int:
        return self.epoch

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(f"job {self.job_id}: lease lost")
        self.store.check(self.job_id, self.epoch)

    def budget(self, config: JobConfig, spent: float) -> Budget:
        return LedgerBudget(resolve_prices(config), config.budget.max_usd, spent=spent, ledger=self.ledger,
                            caps=self.caps)


class Worker:
    def __init__(self, store: Store, settings: Settings, owner: str | None = None, poll_seconds: float = 0.5):
        self.store = store
        self.settings = settings
        self.ledger = Ledger(store.sessions)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.poll_seconds = poll_seconds

    def run_once(self) -> bool:
        job = self.store.claim(self.owner)
        if job is None:
            return False
        self._run(job.id, job.epoch, job.config, Path(job.run_dir), job.schedule_id)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.run_once():
                    stop.wait(self.poll_seconds)
            except Exception:
                log.exception("worker %s: unexpected error", self.owner)
                stop.wait(self.poll_seconds)

    def _run(self, job_id: str, epoch: int, raw: dict[str, Any], run_dir: Path, schedule_id: str | None) -> None:
        from distilforge.run.lifecycle import run_job

        cap = None
        if schedule_id:
            with self.store.sessions() as s:
                schedule = s.get(Schedule, schedule_id)
                cap = schedule.monthly_cap_usd if schedule else None
        control = JobControl(self.store, self.ledger, self.settings, job_id, epoch, cap, schedule_id)
        control.start()
        try:
            config = JobConfig.model_validate(raw)
            with open(os.devnull, "w") as quiet:
                result = run_job(config, run_dir, control, console=Console(file=quiet))
            if result.status == "lease_lost" or control.lost():
                return
            state = {"completed": "succeeded", "stopped": "stopped_budget", "cancelled": "cancelled",
                     "interrupted": "cancelled"}.get(result.status, "failed")
            error = result.run.get("error") if state == "failed" else None
            self.store.finish(job_id, epoch, state, summary=job_summary(result.run), error=error)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker owns it now", job_id)
        except BaseException as exc:  # the job failed; the worker lives on
            if control.lost():
                return
            from distilforge.core.redact import redact

            with contextlib.suppress(LeaseLost):
                self.store.finish(job_id, epoch, "failed", error=redact(f"{type(exc).__name__}: {exc}")[:2000])
            log.error("job %s failed: %s", job_id, redact(traceback.format_exc(limit=3)))
        finally:
            control.close()


def job_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a run: counts and money, never config secrets (there are none in run.json)."""
    return {k: run.get(k) for k in ("kept", "rejected", "samples", "requests", "tokens", "cost_usd", "stopped",
                                    "wall_seconds", "total_seconds", "mode", "train", "eval", "published")}


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
