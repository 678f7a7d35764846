"""The run folder's small files: run.json (merged section by section) and the config snapshot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from distilforge.core.config import ConfigError, JobConfig, load_config

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
    data.update(sections)
    write_atomic(run_dir / RUN_JSON, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data


def _strip_userinfo(url: str) -> str:
    # A base_url like https://user:secret@host must not land in run files.
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def snapshot_config(config: JobConfig, run_dir: Path) -> None:
    data = config.model_dump(mode="json")
    urls = [_strip_userinfo(u) for u in config.teacher.base_urls]
    data["teacher"]["base_url"] = urls[0] if isinstance(config.teacher.base_url, str) else (urls or None)
    write_atomic(run_dir / CONFIG_SNAPSHOT, yaml.safe_dump(data, sort_keys=False))


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> JobConfig:
    path = run_dir / CONFIG_SNAPSHOT
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a run folder (no {CONFIG_SNAPSHOT}); run `distilforge run CONFIG` first")
    return load_config(path, overrides)
