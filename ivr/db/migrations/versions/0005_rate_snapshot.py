"""reservations keep the rates in force when the call was authorized

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("rates_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_snapshot", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("rate_snapshot")
        batch.drop_column("rates_version")
