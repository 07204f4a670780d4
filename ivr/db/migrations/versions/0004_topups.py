"""top-ups: vouchers, payment methods, payments, auto-recharge and notice settings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 03:00:00
"""

import sqlalchemy as sa
from alembic import op

from ivr.db.types import Money

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MONEY = Money()  # integer micro-units


def upgrade() -> None:
    op.create_table(
        "vouchers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("value", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("batch", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redeemed_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["redeemed_by"], ["accounts.id"],
                                name=op.f("fk_vouchers_redeemed_by_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vouchers")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_vouchers_code_hash")),
    )
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("brand", sa.String(length=16), nullable=False),
        sa.Column("expiry", sa.String(length=4), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_payment_methods_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_methods")),
    )
    op.create_index("ix_payment_methods_account_id", "payment_methods", ["account_id"])
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("gateway_ref", sa.String(length=128), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_payments_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_payments_payment_id")),
    )
    op.create_index("ix_payments_account_id", "payments", ["account_id"])
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("auto_recharge_threshold", MONEY, nullable=True))
        batch.add_column(sa.Column("auto_recharge_amount", MONEY, nullable=True))
        batch.add_column(sa.Column("auto_recharge_daily_cap", MONEY, nullable=True))
        batch.add_column(sa.Column("email", sa.String(length=254), nullable=True))
        batch.add_column(sa.Column("sms_number", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("low_balance_notice", MONEY, nullable=True))
        batch.add_column(sa.Column("low_balance_notified_at", sa.DateTime(timezone=True),
                                   nullable=True))
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("failed_codes", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.drop_column("failed_codes")
    with op.batch_alter_table("accounts") as batch:
        for name in ("low_balance_notified_at", "low_balance_notice", "sms_number", "email",
                     "auto_recharge_daily_cap", "auto_recharge_amount",
                     "auto_recharge_threshold"):
            batch.drop_column(name)
    op.drop_index("ix_payments_account_id", table_name="payments")
    op.drop_table("payments")
    op.drop_index("ix_payment_methods_account_id", table_name="payment_methods")
    op.drop_table("payment_methods")
    op.drop_table("vouchers")
