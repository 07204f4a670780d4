"""The revalue line: customers, ported numbers, the recharge-code pool

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 04:40:00
"""

import sqlalchemy as sa
from alembic import op

from ivr.db.types import Money

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MONEY = Money()  # integer micro-units


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("msisdn", sa.String(length=16), nullable=False),
        sa.Column("code_hash", sa.String(length=200), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("pay", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_customers_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("msisdn", name=op.f("uq_customers_msisdn")),
    )
    op.create_index(op.f("ix_customers_account_id"), "customers", ["account_id"])
    op.create_table(
        "ported_numbers",
        sa.Column("msisdn", sa.String(length=16), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("mccmnc", sa.String(length=6), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("msisdn", name=op.f("pk_ported_numbers")),
    )
    op.create_table(
        "recharge_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("value", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("code_enc", sa.Text(), nullable=False),
        sa.Column("code_mac", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                name=op.f("fk_recharge_codes_customer_id_customers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recharge_codes")),
        sa.UniqueConstraint("code_mac", name=op.f("uq_recharge_codes_code_mac")),
    )
    op.create_index("ix_recharge_codes_pool", "recharge_codes",
                    ["operator", "currency", "value", "status"])
    op.create_table(
        "recharge_pools",
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("value", MONEY, nullable=False),
        sa.Column("low_stock_noticed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("operator", "currency", "value", name=op.f("pk_recharge_pools")),
    )


def downgrade() -> None:
    op.drop_table("recharge_pools")
    op.drop_index("ix_recharge_codes_pool", table_name="recharge_codes")
    op.drop_table("recharge_codes")
    op.drop_table("ported_numbers")
    op.drop_index(op.f("ix_customers_account_id"), table_name="customers")
    op.drop_table("customers")
