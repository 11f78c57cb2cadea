"""Evaluations of any model /generate accepts (issue 19, item 8): `model` names what was
evaluated; `job_id` and `step` are empty for a base model.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("model", sa.String(200), nullable=True))
    op.execute("UPDATE evaluations SET model = job_id || ':' || CAST(step AS VARCHAR(12))")
    with op.batch_alter_table("evaluations") as batch:  # SQLite rebuilds the table
        batch.alter_column("model", existing_type=sa.String(200), nullable=False)
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=True)
        batch.alter_column("step", existing_type=sa.Integer(), nullable=True)
    op.create_index("ix_evaluations_tenant_created", "evaluations", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_tenant_created", table_name="evaluations")
    op.execute("DELETE FROM evaluations WHERE job_id IS NULL")  # base-model evaluations have no older form
    with op.batch_alter_table("evaluations") as batch:
        batch.alter_column("step", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=False)
        batch.drop_column("model")
