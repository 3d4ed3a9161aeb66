"""Conversation history and answer feedback in SQLite, each row owned by one user.

Only pseudonymised text is written: questions and answers as the model saw them
(`<PERSON_1>`), passages not at all. The pseudonym vault lives only in the serving process, so
nothing on disk maps a placeholder back to a person.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rag.schema import StageReport
from ui.render import AnswerView, ChipView, RouteView, SourceView

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    title TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user, updated);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    request_id TEXT,
    details TEXT,
    PRIMARY KEY (conversation_id, ordinal)
);
CREATE INDEX IF NOT EXISTS messages_by_request ON messages (request_id);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment TEXT NOT NULL DEFAULT '',
    time TEXT NOT NULL,
    PRIMARY KEY (request_id, user)
);
"""

Rating = Literal["up", "down"]
TITLE_CHARS = 60


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    updated: str


@dataclass(frozen=True)
class StoredTurn:
    role: Literal["user", "assistant"]
    content: str
    request_id: str | None = None
    details: AnswerView | None = None


@dataclass(frozen=True)
class Feedback:
    request_id: str
    user: str
    rating: Rating
    comment: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def title_from(question: str) -> str:
    line = " ".join(question.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def view_to_json(view: AnswerView) -> str:
    data = asdict(view)
    # Passages stay in the store, where deleting a document removes them; history keeps
    # where an answer came from, not a copy of the text.
    for source in data["sources"]:
        source["text"] = ""
    return json.dumps(data)


def view_from_json(text: str) -> AnswerView:
    data: dict[str, Any] = json.loads(text)
    route = data.get("route")
    return AnswerView(
        request_id=data["request_id"],
        status=data["status"],
        text=data["text"],
        chips=tuple(ChipView(**c) for c in data.get("chips", ())),
        sources=tuple(SourceView(**s) for s in data.get("sources", ())),
        route=RouteView(**route) if route else None,
        stages=tuple(StageReport(**s) for s in data.get("stages", ())),
        first_token_ms=data.get("first_token_ms"),
    )


class HistoryStore:
    """One SQLite file; every method takes the user and touches only that user's rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # sqlite3 connections are per thread by default; Gradio runs handlers in a pool, so
        # each call opens its own (cheap) and a lock keeps writers in order.
        self._write_lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            with db:
                yield db
        finally:
            db.close()

    # ---- conversations ------------------------------------------------------------------

    def create(self, user: str, title: str) -> str:
        conversation_id = uuid.uuid4().hex
        now = _now()
        with self._write_lock, self._connect() as db:
            db.execute(
                "INSERT INTO conversations (id, user, title, created, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                (conversation_id, user, title_from(title) or "New conversation", now, now),
            )
        return conversation_id

    def conversations(self, user: str) -> list[ConversationSummary]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, title, updated FROM conversations WHERE user = ? "
                "ORDER BY updated DESC, created DESC",
                (user,),
            ).fetchall()
        return [ConversationSummary(*row) for row in rows]

    def owns(self, user: str, conversation_id: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)
            ).fetchone()
        return row is not None

    def rename(self, user: str, conversation_id: str, title: str) -> bool:
        title = title_from(title)
        if not title:
            return False
        with self._write_lock, self._connect() as db:
            changed = db.execute(
                "UPDATE conversations SET title = ? WHERE id = ? AND user = ?",
                (title, conversation_id, user),
            ).rowcount
        return changed == 1

    def delete(self, user: str, conversation_id: str) -> bool:
        with self._write_lock, self._connect() as db:
            removed = db.execute(
                "DELETE FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)
            ).rowcount
        return removed == 1

    # ---- turns --------------------------------------------------------------------------

    def append(self, user: str, conversation_id: str, turns: Sequence[StoredTurn]) -> None:
        with self._write_lock, self._connect() as db:
            owned = db.execute(
                "SELECT 1 FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)
            ).fetchone()
            if owned is None:
                raise PermissionError(f"conversation {conversation_id} is not {user}'s")
            (next_ordinal,) = db.execute(
                "SELECT COALESCE(MAX(ordinal) + 1, 0) FROM messages WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            db.executemany(
                "INSERT INTO messages (conversation_id, ordinal, role, content, request_id, "
                "details) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        conversation_id,
                        next_ordinal + i,
                        t.role,
                        t.content,
                        t.request_id,
                        view_to_json(t.details) if t.details is not None else None,
                    )
                    for i, t in enumerate(turns)
                ],
            )
            db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?", (_now(), conversation_id)
            )

    def turns(self, user: str, conversation_id: str) -> list[StoredTurn]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT m.role, m.content, m.request_id, m.details FROM messages m "
                "JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.id = ? AND c.user = ? ORDER BY m.ordinal",
                (conversation_id, user),
            ).fetchall()
        return [
            StoredTurn(role, content, request_id, view_from_json(details) if details else None)
            for role, content, request_id, details in rows
        ]

    # ---- feedback -----------------------------------------------------------------------

    def record_feedback(
        self, user: str, request_id: str, rating: Rating, comment: str | None = None
    ) -> bool:
        """Thumbs (and optionally a comment, already pseudonymised) on one of the user's own
        answers; False when the answer is not theirs."""
        with self._write_lock, self._connect() as db:
            owned = db.execute(
                "SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE m.request_id = ? AND c.user = ? AND m.role = 'assistant'",
                (request_id, user),
            ).fetchone()
            if owned is None:
                return False
            db.execute(
                "INSERT INTO feedback (request_id, user, rating, comment, time) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id, user) DO UPDATE SET "
                "rating = excluded.rating, time = excluded.time, "
                "comment = COALESCE(?, feedback.comment)",
                (request_id, user, rating, comment or "", _now(), comment),
            )
        return True

    def feedback(self, request_id: str) -> list[Feedback]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT request_id, user, rating, comment FROM feedback WHERE request_id = ?",
                (request_id,),
            ).fetchall()
        return [Feedback(*row) for row in rows]
