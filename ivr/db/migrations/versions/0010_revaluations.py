"""The revalue line: revaluations, their state history, loyalty points

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 05:00:00
"""

import sqlalchemy as sa
from alembic import op

from ivr.db.types import Money

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

MONEY = Money()  # integer micro-units


def upgrade() -> None:
    op.create_table(
        "revaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("msisdn", sa.String(length=16), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("pay", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("code_id", sa.Integer(), nullable=True),
        sa.Column("operator_ref", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_revaluations_account_id_accounts")),
        sa.ForeignKeyConstraint(["code_id"], ["recharge_codes.id"],
                                name=op.f("fk_revaluations_code_id_recharge_codes")),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                name=op.f("fk_revaluations_customer_id_customers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revaluations")),
        sa.UniqueConstraint("request_id", name=op.f("uq_revaluations_request_id")),
    )
    op.create_index(op.f("ix_revaluations_account_id"), "revaluations", ["account_id"])
    op.create_index(op.f("ix_revaluations_customer_id"), "revaluations", ["customer_id"])
    op.create_index(op.f("ix_revaluations_state"), "revaluations", ["state"])
    op.create_table(
        "revaluation_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revaluation_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["revaluation_id"], ["revaluations.id"],
                                name=op.f("fk_revaluation_events_revaluation_id_revaluations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revaluation_events")),
    )
    op.create_index(op.f("ix_revaluation_events_revaluation_id"), "revaluation_events",
                    ["revaluation_id"])
    op.create_table(
        "loyalty_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=128), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                name=op.f("fk_loyalty_entries_customer_id_customers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_entries")),
        sa.UniqueConstraint("kind", "ref", name="uq_loyalty_entries_kind_ref"),
    )
    op.create_index(op.f("ix_loyalty_entries_customer_id"), "loyalty_entries",
                    ["customer_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_loyalty_entries_customer_id"), table_name="loyalty_entries")
    op.drop_table("loyalty_entries")
    op.drop_index(op.f("ix_revaluation_events_revaluation_id"),
                  table_name="revaluation_events")
    op.drop_table("revaluation_events")
    op.drop_index(op.f("ix_revaluations_state"), table_name="revaluations")
    op.drop_index(op.f("ix_revaluations_customer_id"), table_name="revaluations")
    op.drop_index(op.f("ix_revaluations_account_id"), table_name="revaluations")
    op.drop_table("revaluations")
