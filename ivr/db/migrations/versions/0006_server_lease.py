"""one server per database: a lease row with a heartbeat; reservations name their server

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
    )
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("server_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("alive_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(op.f("fk_reservations_server_id_servers"), "servers",
                                 ["server_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.drop_constraint(op.f("fk_reservations_server_id_servers"), type_="foreignkey")
        batch.drop_column("alive_at")
        batch.drop_column("answered_at")
        batch.drop_column("server_id")
    op.drop_table("servers")
