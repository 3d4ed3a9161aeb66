"""Conversation history and answer feedback, each row owned by one user: a SQLite file by
default, a PostgreSQL database when `history.url` names one (so every pod lists the same
conversations). One schema for both, written with SQLAlchemy Core and migrated by Alembic
(ui/migrations/) when the store opens.

Only pseudonymised text is written: questions and answers as the model saw them
(`<PERSON_1>`), passages not at all. The pseudonym vault lives only in the serving process, so
nothing in the database maps a placeholder back to a person.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from rag.schema import StageReport
from ui.render import AnswerView, ChipView, RouteView, SourceView

Rating = Literal["up", "down"]
TITLE_CHARS = 60
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The schema every history.sqlite had before migrations existed (the hand-written
# CREATE TABLEs of the first release); such a file is stamped with it, then upgraded.
BASELINE_REVISION = "0001"

# The current schema, for queries and for checking that the migrations produce it. Columns
# keep the first release's names and types, so its files needed no rewrite.
SCHEMA = MetaData()
conversations = Table(
    "conversations",
    SCHEMA,
    Column("id", Text, primary_key=True),
    Column("user", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("updated", Text, nullable=False),
    Index("conversations_by_user", "user", "updated"),
)
messages = Table(
    "messages",
    SCHEMA,
    Column(
        "conversation_id",
        Text,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("ordinal", Integer, primary_key=True),
    Column("role", Text, CheckConstraint("role IN ('user', 'assistant')"), nullable=False),
    Column("content", Text, nullable=False),
    Column("request_id", Text),
    Column("details", Text),
    Index("messages_by_request", "request_id"),
)
feedback_rows = Table(
    "feedback",
    SCHEMA,
    Column("request_id", Text, primary_key=True),
    Column("user", Text, primary_key=True),
    Column("rating", Text, CheckConstraint("rating IN ('up', 'down')"), nullable=False),
    Column("comment", Text, nullable=False, server_default=""),
    Column("time", Text, nullable=False),
)


class HistoryError(RuntimeError):
    """The history database cannot be opened; the message names it (never its password)."""


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


def database_url(location: Path | str) -> URL:
    """A SQLite file's path, or a database URL; `postgresql://` means psycopg 3, the driver
    guardrag ships (SQLAlchemy's own default for that scheme is psycopg2)."""
    if isinstance(location, Path):
        return URL.create("sqlite+pysqlite", database=str(location))
    url = make_url(location)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def open_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # sqlite3's busy wait; the first release waited 10 s too.
        return create_engine(url, connect_args={"timeout": 10})
    # Pre-ping: a connection the database restarted under is replaced, not handed out.
    return create_engine(url, pool_pre_ping=True)


def migrate(connection: Connection) -> None:
    """Bring the schema to the newest revision: create it in an empty database, stamp a
    first-release SQLite file (tables, no revision table) with the baseline, then upgrade."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    tables = inspect(connection)
    if tables.has_table("conversations") and not tables.has_table("alembic_version"):
        command.stamp(config, BASELINE_REVISION)
    command.upgrade(config, "head")


class HistoryStore:
    """One database; every method takes the user and touches only that user's rows."""

    def __init__(self, location: Path | str) -> None:
        url = database_url(location)
        # Where it is, for messages and for tests that open the file: never the password.
        self.where = url.render_as_string(hide_password=True)
        self.path = (
            Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None
        )
        self.engine = open_engine(url)
        # One writer at a time in this process: SQLite refuses a second writer's upgrade of
        # its read lock at once, without waiting. Across processes (PostgreSQL), the row
        # locks taken below keep writers to one conversation in order.
        self._write_lock = threading.Lock()
        self._open_schema()

    def _open_schema(self) -> None:
        # Pods starting together race to create the tables; the loser's DDL fails (PostgreSQL
        # runs DDL in a transaction, so it leaves nothing half made) and its retry finds the
        # schema at head.
        for attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    if self.path is not None:
                        # WAL lets readers read while a turn is written; the file keeps it.
                        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                    migrate(connection)
                return
            except (IntegrityError, ProgrammingError):
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))
            except OperationalError as exc:
                raise HistoryError(
                    f"history database {self.where} cannot be opened ({exc.orig}): check "
                    f"history.url, and that the database runs and takes this user"
                ) from None

    def close(self) -> None:
        self.engine.dispose()

    # ---- conversations ------------------------------------------------------------------

    def create(self, user: str, title: str) -> str:
        conversation_id = uuid.uuid4().hex
        now = _now()
        with self._write_lock, self.engine.begin() as db:
            db.execute(
                insert(conversations).values(
                    id=conversation_id,
                    user=user,
                    title=title_from(title) or "New conversation",
                    created=now,
                    updated=now,
                )
            )
        return conversation_id

    def conversations(self, user: str) -> list[ConversationSummary]:
        c = conversations.c
        with self.engine.connect() as db:
            rows = db.execute(
                select(c.id, c.title, c.updated)
                .where(c.user == user)
                .order_by(c.updated.desc(), c.created.desc())
            ).all()
        return [ConversationSummary(*row) for row in rows]

    def owns(self, user: str, conversation_id: str) -> bool:
        with self.engine.connect() as db:
            return db.execute(_owned(user, conversation_id)).first() is not None

    def rename(self, user: str, conversation_id: str, title: str) -> bool:
        title = title_from(title)
        if not title:
            return False
        c = conversations.c
        with self._write_lock, self.engine.begin() as db:
            changed = db.execute(
                update(conversations)
                .where(c.id == conversation_id, c.user == user)
                .values(title=title)
            ).rowcount
        return changed == 1

    def delete(self, user: str, conversation_id: str) -> bool:
        c = conversations.c
        with self._write_lock, self.engine.begin() as db:
            removed = db.execute(
                delete(conversations).where(c.id == conversation_id, c.user == user)
            ).rowcount
            if removed == 1:
                # PostgreSQL cascades; SQLite enforces foreign keys only when asked per
                # connection, so the turns go explicitly on both.
                db.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
        return removed == 1

    # ---- turns --------------------------------------------------------------------------

    def append(self, user: str, conversation_id: str, turns: Sequence[StoredTurn]) -> None:
        m = messages.c
        with self._write_lock, self.engine.begin() as db:
            # Locking the conversation's row orders two processes appending to it; the next
            # ordinal is read under that lock.
            if db.execute(_owned(user, conversation_id).with_for_update()).first() is None:
                raise PermissionError(f"conversation {conversation_id} is not {user}'s")
            next_ordinal = db.execute(
                select(func.coalesce(func.max(m.ordinal) + 1, 0)).where(
                    m.conversation_id == conversation_id
                )
            ).scalar_one()
            db.execute(
                insert(messages),
                [
                    {
                        "conversation_id": conversation_id,
                        "ordinal": next_ordinal + i,
                        "role": t.role,
                        "content": t.content,
                        "request_id": t.request_id,
                        "details": view_to_json(t.details) if t.details is not None else None,
                    }
                    for i, t in enumerate(turns)
                ],
            )
            db.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(updated=_now())
            )

    def turns(self, user: str, conversation_id: str) -> list[StoredTurn]:
        m, c = messages.c, conversations.c
        with self.engine.connect() as db:
            rows = db.execute(
                select(m.role, m.content, m.request_id, m.details)
                .join_from(messages, conversations, m.conversation_id == c.id)
                .where(c.id == conversation_id, c.user == user)
                .order_by(m.ordinal)
            ).all()
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
        m, c, f = messages.c, conversations.c, feedback_rows.c
        with self._write_lock, self.engine.begin() as db:
            # The answer's conversation row, locked: two processes recording feedback on it
            # take turns, so the update-or-insert below cannot insert twice.
            owner = db.execute(
                select(c.id)
                .join_from(messages, conversations, m.conversation_id == c.id)
                .where(m.request_id == request_id, c.user == user, m.role == "assistant")
                .limit(1)
                .with_for_update(of=conversations)
            ).first()
            if owner is None:
                return False
            now = _now()
            # A rating alone keeps the comment given earlier.
            changes: dict[str, str] = {"rating": rating, "time": now}
            if comment is not None:
                changes["comment"] = comment
            updated = db.execute(
                update(feedback_rows)
                .where(f.request_id == request_id, f.user == user)
                .values(**changes)
            ).rowcount
            if updated == 0:
                db.execute(
                    insert(feedback_rows).values(
                        request_id=request_id,
                        user=user,
                        rating=rating,
                        comment=comment or "",
                        time=now,
                    )
                )
        return True

    def feedback(self, request_id: str) -> list[Feedback]:
        f = feedback_rows.c
        with self.engine.connect() as db:
            rows = db.execute(
                select(f.request_id, f.user, f.rating, f.comment).where(f.request_id == request_id)
            ).all()
        return [Feedback(*row) for row in rows]


def _owned(user: str, conversation_id: str) -> Select[int]:
    c = conversations.c
    return (
        select(literal(1)).select_from(conversations).where(c.id == conversation_id, c.user == user)
    )
