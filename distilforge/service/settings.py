"""Service settings, from the environment only (secrets never come from a file or a request).

Tokens are `name:token` entries (split at the first `:`; a bare token belongs to owner `default`).
Limits are `DISTILFORGE_LIMITS_*` variables; prices are `DISTILFORGE_PRICES`; per-owner monthly caps
are `DISTILFORGE_OWNER_CAPS`. Every secret value read here (tokens, the allowed teacher keys, the
database password) is registered with `core.redact`, so no log line or answer can carry it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilforge.core.redact import register_secret
from distilforge.schemas import Prices

OWNER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SettingsError(ValueError):
    """A setting that cannot be used; the service refuses to start rather than guess."""


def _list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _limit(name: str, default: float) -> Any:
    """A server limit, overridden by DISTILFORGE_LIMITS_<NAME> (the env name is the field's, upper-cased)."""
    cast = int if isinstance(default, int) else float
    return field(default_factory=lambda: cast(os.environ.get(f"DISTILFORGE_LIMITS_{name.upper()}") or default))


@dataclass
class Limits:
    """Server-set maxima (and floors, `min_*`), checked when a job or schedule is submitted, when a schedule
    fires and when a job is claimed: a knob past one is a 422 naming the key and the limit, never clamped.
    Each is `DISTILFORGE_LIMITS_<FIELD>` (`DISTILFORGE_LIMITS_REQUEST_SECONDS=3600`)."""

    seeds: int = _limit("seeds", 1_000_000)
    samples_per_seed: int = _limit("samples_per_seed", 64)
    concurrency: int = _limit("concurrency", 1024)
    schedule_seconds: float = _limit("schedule_seconds", 60.0)
    body_bytes: int = _limit("body_bytes", 1 << 20)
    config_nodes: int = _limit("config_nodes", 10_000)
    ranks: int = _limit("ranks", 8)
    input_bytes: int = _limit("input_bytes", 50 << 30)
    # Per request: reasoning teachers write long traces slowly, so 64k tokens and 30 minutes.
    completion_tokens: int = _limit("completion_tokens", 65_536)
    request_seconds: float = _limit("request_seconds", 1800.0)
    attempts: int = _limit("attempts", 20)
    retry_seconds: float = _limit("retry_seconds", 3600.0)
    min_rpm: float = _limit("min_rpm", 1.0)
    min_tpm: float = _limit("min_tpm", 1000.0)
    min_poll_seconds: float = _limit("min_poll_seconds", 1.0)
    # A long answer's time is max_completion_tokens / this rate: a floor, so that no job buys hours a request.
    min_token_rate: float = _limit("min_token_rate", 10.0)
    batch_rounds: int = _limit("batch_rounds", 10)
    # Generation, filters and rounds.
    icl_k: int = _limit("icl_k", 64)
    rounds: int = _limit("rounds", 16)
    minhash_perm: int = _limit("minhash_perm", 1024)
    ngram: int = _limit("ngram", 64)
    words: int = _limit("words", 1_000_000)
    # Training.
    epochs: float = _limit("epochs", 100.0)
    train_steps: int = _limit("train_steps", 1_000_000)
    train_batch: int = _limit("train_batch", 1024)
    sequence_tokens: int = _limit("sequence_tokens", 131_072)
    lora_rank: int = _limit("lora_rank", 1024)
    # Per job and per owner.
    job_seconds: float = _limit("job_seconds", 86_400.0)
    submissions_per_minute: int = _limit("submissions_per_minute", 60)
    schedules: int = _limit("schedules", 20)
    queued_jobs: int = _limit("queued_jobs", 100)


@dataclass(frozen=True)
class Principal:
    """Who sent a request: an owner name, and whether the token sees every owner's jobs."""

    owner: str
    admin: bool = False


def parse_tokens(entries: list[str], bare_owner: str = "default") -> dict[str, str]:
    """token -> owner from `name:token` entries (split at the first ':'; a bare token is `bare_owner`)."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = bare_owner, entry
        name, token = name.strip(), token.strip()
        if not OWNER_NAME.match(name):
            raise SettingsError("an API token entry has an invalid owner name (letters, digits, _ . - only)")
        if not token:
            raise SettingsError(f"the API token entry of owner {name} has no token")
        out[token] = name
    return out


def parse_prices(text: str) -> dict[str, Prices]:
    """DISTILFORGE_PRICES: `KEY=IN/OUT[/CACHED]` entries, comma-separated, or a JSON object {KEY: [IN, OUT(, CACHED)]}.

    KEY is a model name, a teacher endpoint URL, or `*` (the default for anything else); IN and OUT are
    USD per million input and output tokens; CACHED, for cached input tokens, defaults to IN.
    """
    text = text.strip()
    if not text:
        return {}
    out: dict[str, Prices] = {}
    if text.startswith("{"):
        for key, value in json.loads(text).items():
            if isinstance(value, dict):
                out[key] = Prices.model_validate(value)
            else:
                inp, outp, *cached = value
                out[key] = Prices(input_per_million=float(inp), output_per_million=float(outp),
                                  cached_input_per_million=float(cached[0]) if cached else None)
        return out
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.strip().rpartition("=")
        inp, slash, rest = value.partition("/")
        outp, _, cached = rest.partition("/")  # an optional third figure: the cached-input price
        if not sep or not slash or not key:
            raise SettingsError(f"DISTILFORGE_PRICES: {entry.strip()!r} is not KEY=INPUT/OUTPUT[/CACHED_INPUT]")
        out[key.strip()] = Prices(input_per_million=float(inp), output_per_million=float(outp),
                                  cached_input_per_million=float(cached) if cached else None)
    return out


def parse_discounts(text: str) -> dict[str, float]:
    """DISTILFORGE_BATCH_DISCOUNTS: `KEY=MULTIPLIER` entries (0 < MULTIPLIER <= 1), KEY as in DISTILFORGE_PRICES."""
    out: dict[str, float] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.strip().rpartition("=")
        try:
            multiplier = float(value)
        except ValueError:
            multiplier = -1.0
        if not sep or not key.strip() or not 0 < multiplier <= 1:
            raise SettingsError(f"DISTILFORGE_BATCH_DISCOUNTS: {entry.strip()!r} is not KEY=MULTIPLIER (0 < x <= 1)")
        out[key.strip()] = multiplier
    return out


def parse_caps(entries: list[str]) -> dict[str, float]:
    out = {}
    for entry in entries:
        name, sep, value = entry.rpartition(":")
        if not sep or not OWNER_NAME.match(name.strip()):
            raise SettingsError(f"DISTILFORGE_OWNER_CAPS: {entry!r} is not OWNER:USD")
        out[name.strip()] = float(value)
    return out


@dataclass
class Settings:
    home: Path = field(default_factory=lambda: Path(os.environ.get("DISTILFORGE_HOME", "~/.distilforge")).expanduser())
    database_url: str = ""
    api_tokens: list[str] = field(default_factory=lambda: _list("DISTILFORGE_API_TOKENS"))
    admin_tokens: list[str] = field(default_factory=lambda: _list("DISTILFORGE_ADMIN_TOKENS"))
    data_roots: list[Path] = field(default_factory=list)
    allowed_teachers: list[str] = field(default_factory=lambda: _list("DISTILFORGE_ALLOWED_TEACHERS"))
    teacher_key_envs: list[str] = field(default_factory=lambda: _list("DISTILFORGE_TEACHER_KEY_ENVS"))
    hub_repos: list[str] = field(default_factory=lambda: _list("DISTILFORGE_HUB_REPOS"))
    allowed_models: list[str] = field(default_factory=lambda: _list("DISTILFORGE_ALLOWED_MODELS"))
    prices: dict[str, Prices] = field(default_factory=lambda: parse_prices(os.environ.get("DISTILFORGE_PRICES", "")))
    owner_caps: dict[str, float] = field(default_factory=lambda: parse_caps(_list("DISTILFORGE_OWNER_CAPS")))
    # Batch API price multipliers per endpoint, model or `*` (DISTILFORGE_BATCH_DISCOUNTS, KEY=0.5): a
    # discount is a price, so it is the server's; none applies (1.0) where no entry matches.
    batch_discounts: dict[str, float] = field(
        default_factory=lambda: parse_discounts(os.environ.get("DISTILFORGE_BATCH_DISCOUNTS", "")))
    limits: Limits = field(default_factory=Limits)
    # /metrics labels name states and owners' totals: it needs a token unless this is on.
    metrics_public: bool = field(default_factory=lambda: os.environ.get("DISTILFORGE_METRICS_PUBLIC", "").lower()
                                 in ("1", "true", "yes", "on"))
    lease_seconds: float = field(default_factory=lambda: float(os.environ.get("DISTILFORGE_LEASE_SECONDS", "30")))
    # Jobs run as Ray ranks on this cluster (`executor.workers` of them) instead of in the worker's process.
    ray_address: str | None = field(default_factory=lambda: os.environ.get("DISTILFORGE_RAY_ADDRESS") or None)
    monthly_cap_usd: float | None = field(
        default_factory=lambda: float(os.environ["DISTILFORGE_MONTHLY_CAP_USD"])
        if os.environ.get("DISTILFORGE_MONTHLY_CAP_USD") else None)

    def __post_init__(self) -> None:
        self.home = self.home.expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{self.home / 'distilforge.db'}"
        if not self.data_roots:
            roots = _list("DISTILFORGE_DATA_ROOTS") or [str(self.home / "data")]
            self.data_roots = [Path(r).expanduser().resolve() for r in roots]
        self.data_roots = [Path(r).resolve() for r in self.data_roots]
        for root in self.data_roots:
            root.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.prices = {k: v if isinstance(v, Prices) else Prices(input_per_million=v[0], output_per_million=v[1])
                       for k, v in self.prices.items()}
        self._tokens = parse_tokens(self.api_tokens)
        admins = parse_tokens(self.admin_tokens, bare_owner="admin")
        self._admin = set(admins)
        for token, name in admins.items():
            self._tokens.setdefault(token, name)
        self.register_secrets()

    def register_secrets(self) -> None:
        """Every secret this process can see is masked by `redact` from now on."""
        for token in self._tokens:
            register_secret(token)
        for name in self.teacher_key_envs:
            register_secret(os.environ.get(name))
        with contextlib.suppress(Exception):  # a URL sqlalchemy cannot parse has no password to mask
            from sqlalchemy.engine import make_url

            register_secret(make_url(self.database_url).password)  # type: ignore[arg-type]

    @property
    def runs_dir(self) -> Path:
        """Run folders of service jobs: `DISTILFORGE_HOME/runs/<job id>`, never chosen by a job."""
        return self.home / "runs"

    @property
    def excluded_paths(self) -> list[Path]:
        """Inside the data roots, still out of a job's reach: run folders and the SQLite store."""
        paths = [self.runs_dir]
        if self.database_url.startswith("sqlite:///"):
            db = Path(self.database_url[len("sqlite:///"):]).expanduser().resolve()
            paths += [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]
        return paths

    def principal(self, token: str) -> Principal | None:
        """The owner of a bearer token (constant-time comparison against every configured token).

        Header values arrive decoded as latin-1: encoding them back gives the bytes that were sent, so a
        non-ASCII token is compared as bytes (and simply does not match) instead of raising.
        """
        import secrets

        try:
            given = token.encode("latin-1")
        except UnicodeEncodeError:
            return None
        found = None
        for candidate, owner in self._tokens.items():
            if secrets.compare_digest(given, candidate.encode("utf-8")) and given and found is None:
                found = Principal(owner, candidate in self._admin)
        return found
