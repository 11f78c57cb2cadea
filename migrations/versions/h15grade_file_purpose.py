"""Uploaded files get a purpose: `dataset` (JSONL records) or `grader` (a python reward function).

Revision ID: h15grade_file_purpose
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "h15grade_file_purpose"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("purpose", sa.String(16), nullable=False, server_default="dataset"))


def downgrade() -> None:
    op.drop_column("files", "purpose")
