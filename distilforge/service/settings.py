"""Service settings, from the environment only (secrets never come from a file or a request)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


@dataclass
class Settings:
    home: Path = field(default_factory=lambda: Path(os.environ.get("DISTILFORGE_HOME", "~/.distilforge")).expanduser())
    database_url: str = ""
    api_tokens: list[str] = field(default_factory=lambda: _list("DISTILFORGE_API_TOKENS"))
    data_roots: list[Path] = field(default_factory=list)
    allowed_teachers: list[str] = field(default_factory=lambda: _list("DISTILFORGE_ALLOWED_TEACHERS"))
    teacher_key_envs: list[str] = field(default_factory=lambda: _list("DISTILFORGE_TEACHER_KEY_ENVS"))
    hub_repos: list[str] = field(default_factory=lambda: _list("DISTILFORGE_HUB_REPOS"))
    lease_seconds: float = field(default_factory=lambda: float(os.environ.get("DISTILFORGE_LEASE_SECONDS", "30")))
    monthly_cap_usd: float | None = field(
        default_factory=lambda: float(os.environ["DISTILFORGE_MONTHLY_CAP_USD"])
        if os.environ.get("DISTILFORGE_MONTHLY_CAP_USD") else None)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{self.home / 'distilforge.db'}"
        if not self.data_roots:
            roots = _list("DISTILFORGE_DATA_ROOTS") or [str(self.home / "data")]
            self.data_roots = [Path(r).expanduser().resolve() for r in roots]
        for root in self.data_roots:
            root.mkdir(parents=True, exist_ok=True)

    @property
    def runs_dir(self) -> Path:
        return self.data_roots[0] / "runs"
