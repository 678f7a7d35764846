"""owners on jobs and schedules, paused schedules, ledger holds per lease epoch, metric counters

Revision ID: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COUNTERS = ("teacher_requests", "rate_limited", "prompt_tokens", "completion_tokens", "kept", "rejected", "spend_usd")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default="default"))
        batch.create_index("ix_jobs_owner", ["owner"])
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default="default"))
        batch.add_column(sa.Column("paused", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("paused_reason", sa.Text, nullable=True))
        batch.create_index("ix_schedules_owner", ["owner"])
    op.create_table(
        "ledger_holds",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("reserved_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("open", sa.Integer, nullable=False, server_default="1"),
    )
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float, nullable=False, server_default="0"),
    )
    # Totals of the jobs that finished before this migration, so the counters start where they were.
    totals = dict.fromkeys(COUNTERS, 0.0)
    for (raw,) in op.get_bind().execute(sa.text("SELECT summary FROM jobs WHERE summary IS NOT NULL")):
        summary = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(summary, dict):
            continue
        for name, value in summary_counts(summary).items():
            totals[name] += value
    op.bulk_insert(counters, [{"name": k, "value": v} for k, v in totals.items()])


def summary_counts(summary: dict) -> dict:
    req, tok = summary.get("requests") or {}, summary.get("tokens") or {}
    return {"teacher_requests": req.get("sent", 0) or 0, "rate_limited": req.get("rate_limited", 0) or 0,
            "prompt_tokens": tok.get("prompt", 0) or 0, "completion_tokens": tok.get("completion", 0) or 0,
            "kept": summary.get("kept") or 0, "rejected": sum((summary.get("rejected") or {}).values()),
            "spend_usd": summary.get("cost_usd") or 0.0}


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("ledger_holds")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_index("ix_schedules_owner")
        batch.drop_column("paused_reason")
        batch.drop_column("paused")
        batch.drop_column("owner")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner")
        batch.drop_column("owner")
