"""The job store's tables (SQLAlchemy 2). Schema changes go through Alembic (migrations/)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "stopped_budget")
FINAL_STATES = ("succeeded", "failed", "cancelled", "stopped_budget")


class UTCDateTime(TypeDecorator):
    """Timestamps are UTC everywhere; SQLite stores them naive, so tz is put back on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    """The store's declarative base."""


class Job(Base):
    __tablename__ = "jobs"
    # One run per schedule fire time, whatever the number of schedulers: a constraint, not a hope.
    __table_args__ = (UniqueConstraint("schedule_id", "fire_time", name="uq_jobs_schedule_fire"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    run_dir: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    updated: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    schedule_id: Mapped[str | None] = mapped_column(ForeignKey("schedules.id"), nullable=True)
    fire_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    owner: Mapped[str] = mapped_column(String(64), default="default", server_default="default", index=True)


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON)
    monthly_cap_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    last_checked: Mapped[datetime] = mapped_column(UTCDateTime())
    owner: Mapped[str] = mapped_column(String(64), default="default", server_default="default", index=True)
    paused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    paused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class BudgetLedger(Base):
    """Spend per scope and month ('global:2026-11', 'schedule:<id>:2026-11'), reserved like a single run."""

    __tablename__ = "budget_ledger"

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)


class LedgerHold(Base):
    """What one lease epoch of a job holds reserved in the monthly ledger (its scopes, how much).

    When a job is claimed after its lease expired, the holds of earlier epochs are converted to spend at
    worst case (those requests may have been billed) and closed; a late settle of a closed hold is a no-op.
    """

    __tablename__ = "ledger_holds"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    scopes: Mapped[str] = mapped_column(Text)  # JSON list of ledger scopes
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    open: Mapped[int] = mapped_column(Integer, default=1)


class Counter(Base):
    """Totals over finished jobs, added when a job finishes, so /metrics reads a few rows."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if url.startswith("sqlite") else {}
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
