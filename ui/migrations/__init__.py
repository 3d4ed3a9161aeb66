"""Alembic migrations of the history database (ui/history.py); run when a HistoryStore opens."""
