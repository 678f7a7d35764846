"""The run folder's small files: run.json (merged section by section) and the config snapshot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from distilforge.core.config import ConfigError, JobConfig, load_config
from distilforge.core.redact import redact, strip_userinfo

RUN_JSON = "run.json"
CONFIG_SNAPSHOT = "config.yaml"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def update_run(run_dir: Path, **sections: Any) -> dict[str, Any]:
    data = read_run(run_dir)
    data.update(scrub(sections))
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
