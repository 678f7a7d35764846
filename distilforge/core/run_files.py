"""The run folder's small files: run.json (every write merged by `RunReport.merge`) and the config snapshot."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from distilforge.core.redact import redact, strip_userinfo
from distilforge.schemas import ConfigError, JobConfig, load_config
from distilforge.schemas.run_report import RunReport

RUN_JSON = "run.json"
CONFIG_SNAPSHOT = "config.yaml"
LOCK_FILE = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock: one writer at a time."""


@contextlib.contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[None]:
    """An exclusive OS lock (flock) on RUN_DIR/.lock for as long as this process writes the folder.

    The kernel releases it when the process exits or crashes, so a stale lock cannot outlive its
    holder. A second writer is refused at once with the holder's pid. A folder this call created is
    removed again if nothing but the lock file was written in it (an input error after the lock).
    """
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusy(f"{run_dir}: another distilforge process (pid {holder}) is writing this run folder; "
                            "wait for it to finish or stop it, then rerun") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def update_run(run_dir: Path, *, recount: bool = False, **sections: Any) -> dict[str, Any]:
    """The one writer of run.json: `sections` (scrubbed) merge into it by `RunReport.merge`. `recount`: the
    sections count the data stage afresh from its journals (a first pass), so its counters start over."""
    report = RunReport.model_validate(read_run(run_dir))
    if recount:
        report = report.recounted()
    data = report.merge(RunReport.model_validate(scrub(sections))).model_dump(mode="json", exclude_unset=True)
    write_atomic(run_dir / RUN_JSON, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data


def scrub(value: Any) -> Any:
    """Credentials out of every URL and every registered secret out of every string, at any depth."""
    if isinstance(value, str):
        return redact(strip_userinfo(value) if "://" in value else value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def snapshot_config(config: JobConfig, run_dir: Path) -> None:
    write_atomic(run_dir / CONFIG_SNAPSHOT, yaml.safe_dump(scrub(config.model_dump(mode="json")), sort_keys=False))


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> JobConfig:
    path = run_dir / CONFIG_SNAPSHOT
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a run folder (no {CONFIG_SNAPSHOT}); run `distilforge run CONFIG` first")
    return load_config(path, overrides)
