"""First-release SQLite files brought to the schema 0001 creates: there `conversations.id`
could hold NULL (SQLite lets a TEXT primary key be NULL unless told otherwise) and the
messages' foreign key was written in a form SQLAlchemy reads without its ON DELETE CASCADE.
Both tables are rebuilt in place (Alembic's batch mode copies them); on a database 0001
created, PostgreSQL included, this changes nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # 0001 made exactly this schema; only files older than migrations differ
    with op.batch_alter_table("conversations", recreate="always") as table:
        table.alter_column("id", existing_type=sa.Text, nullable=False)
    with op.batch_alter_table(
        "messages",
        recreate="always",
        reflect_args=(
            sa.Column(
                "conversation_id",
                sa.Text,
                sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                primary_key=True,
            ),
        ),
        # Unnamed CHECKs are not carried over by a rebuild: named again here.
        table_args=(sa.CheckConstraint("role IN ('user', 'assistant')"),),
    ):
        pass


def downgrade() -> None:
    pass  # the rebuilt tables are what 0001 creates; nothing to undo
