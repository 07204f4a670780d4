"""live calls: a reservation's call key and channel; failed log-ins per caller ID

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 02:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("call_key", sa.String(length=150), nullable=True))
        batch.add_column(sa.Column("channel", sa.String(length=128), nullable=True))
        batch.create_unique_constraint(op.f("uq_reservations_call_key"), ["call_key"])
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("callerid", sa.String(length=32), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"],
                                name=op.f("fk_auth_failures_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failures")),
    )
    op.create_index("ix_auth_failures_callerid_at", "auth_failures", ["callerid", "at"])


def downgrade() -> None:
    op.drop_index("ix_auth_failures_callerid_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_constraint(op.f("uq_reservations_call_key"), type_="unique")
        batch.drop_column("channel")
        batch.drop_column("call_key")
