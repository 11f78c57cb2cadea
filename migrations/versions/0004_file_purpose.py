"""Uploaded files get a purpose: `dataset` (JSONL records) or `grader` (a python reward function).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("purpose", sa.String(16), nullable=False, server_default="dataset"))


def downgrade() -> None:
    op.drop_column("files", "purpose")
