"""The first release's history schema: conversations, their messages, feedback on answers.

Revision ID: 0001
Revises:
Create Date: 2026-12-06

SQLite files written before migrations existed hold exactly these tables; HistoryStore stamps
them with this revision instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("updated", sa.Text, nullable=False),
    )
    op.create_index("conversations_by_user", "conversations", ["user", "updated"])
    op.create_table(
        "messages",
        sa.Column(
            "conversation_id",
            sa.Text,
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("ordinal", sa.Integer, primary_key=True),
        sa.Column(
            "role", sa.Text, sa.CheckConstraint("role IN ('user', 'assistant')"), nullable=False
        ),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text),
        sa.Column("details", sa.Text),
    )
    op.create_index("messages_by_request", "messages", ["request_id"])
    op.create_table(
        "feedback",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("user", sa.Text, primary_key=True),
        sa.Column(
            "rating", sa.Text, sa.CheckConstraint("rating IN ('up', 'down')"), nullable=False
        ),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
        sa.Column("time", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index("messages_by_request", table_name="messages")
    op.drop_table("messages")
    op.drop_index("conversations_by_user", table_name="conversations")
    op.drop_table("conversations")
