"""The jobs table: the columns of ``jobs.job_store.JobRecord``, as in the SQLite store.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stage", sa.Text),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("has_data", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_code", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("output_sha256", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("lease_token", sa.Text),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires", sa.Float),
        sa.Column("sent_at", sa.Float),
        sa.Column("resends", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result_key", sa.Text),
        sa.Column("input_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("result_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("quota_key", sa.Text),
        sa.UniqueConstraint("owner", "idempotency_key", name="jobs_owner_idempotency_key"),
    )
    op.create_index("jobs_by_owner", "jobs", ["owner", "created_at"])
    op.create_index("jobs_by_status", "jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_table("jobs")
