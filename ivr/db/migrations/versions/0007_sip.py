"""SIP trunks and softphone accounts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sip_trunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=True),
        sa.Column("password_enc", sa.Text(), nullable=True),
        sa.Column("register", sa.Boolean(), nullable=False),
        sa.Column("match", sa.Text(), nullable=False),
        sa.Column("outbound", sa.Boolean(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("strip", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sip_trunks")),
        sa.UniqueConstraint("name", name=op.f("uq_sip_trunks_name")),
    )
    op.create_table(
        "sip_phones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("md5_cred", sa.String(length=32), nullable=False),
        sa.Column("callerid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sip_phones")),
        sa.UniqueConstraint("name", name=op.f("uq_sip_phones_name")),
    )


def downgrade() -> None:
    op.drop_table("sip_phones")
    op.drop_table("sip_trunks")
