"""Alembic's entry point: migrates the connection HistoryStore hands over, or (for a
developer writing a revision: `alembic -x url=sqlite:///h.sqlite revision --autogenerate`
with script_location set to this folder) a database named by URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ui.history import SCHEMA

connection = context.config.attributes.get("connection")
if connection is None:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("name the history database: alembic -x url=postgresql://… upgrade head")
    with create_engine(url).begin() as own_connection:
        context.configure(connection=own_connection, target_metadata=SCHEMA, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    # render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that
    # for the revisions that need it, and emits plain ALTERs for PostgreSQL.
    context.configure(connection=connection, target_metadata=SCHEMA, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
