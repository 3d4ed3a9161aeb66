"""Chat history and feedback (ui/history.py) on both stores it supports: a SQLite file (the
default) and PostgreSQL (`history.url`), started from Debian's package for the run. The same
tests run against both; the PostgreSQL ones skip, saying why, where it is not installed."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from evals.local_engines import EngineMissing, new_database, postgres_server
from tests.conftest import local_settings
from ui.history import MIGRATIONS, SCHEMA, HistoryError, HistoryStore, StoredTurn

OpenStore = Callable[[], HistoryStore]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except EngineMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store on one database, as each process of a deployment would."""
    location: Path | str = tmp_path / "history.sqlite"
    if request.param == "postgresql":
        location = new_database(request.getfixturevalue("postgres"))
    opened: list[HistoryStore] = []

    def open_one() -> HistoryStore:
        opened.append(HistoryStore(location))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def _head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_rows_are_per_user_for_list_read_rename_delete_and_feedback(
    open_store: OpenStore,
) -> None:
    history = open_store()
    mine = history.create("alice", "What is <PERSON_1>'s leave?")
    history.append(
        "alice", mine, [StoredTurn("user", "Leave?"), StoredTurn("assistant", "25 days", "req-1")]
    )
    assert [c.id for c in history.conversations("alice")] == [mine]
    assert history.conversations("bob") == [] and history.turns("bob", mine) == []
    assert not history.owns("bob", mine) and history.owns("alice", mine)
    assert not history.rename("bob", mine, "stolen") and not history.delete("bob", mine)
    with pytest.raises(PermissionError):
        history.append("bob", mine, [StoredTurn("user", "x")])
    assert not history.record_feedback("bob", "req-1", "down")
    assert history.record_feedback("alice", "req-1", "up", "Useful, said <PERSON_1>")
    assert history.record_feedback("alice", "req-1", "down"), "a rating alone keeps the comment"
    (feedback,) = history.feedback("req-1")
    assert (feedback.user, feedback.rating, feedback.comment) == (
        "alice",
        "down",
        "Useful, said <PERSON_1>",
    )
    assert history.rename("alice", mine, "Leave") and history.conversations("alice")[0].title
    assert [t.content for t in history.turns("alice", mine)] == ["Leave?", "25 days"]
    assert history.delete("alice", mine)
    assert history.turns("alice", mine) == [] and history.conversations("alice") == []


def test_a_conversation_written_through_one_store_is_read_through_another(
    open_store: OpenStore,
) -> None:
    first, second = open_store(), open_store()
    conversation = first.create("alice", "Remote days")
    first.append("alice", conversation, [StoredTurn("user", "How many?")])
    second.append("alice", conversation, [StoredTurn("assistant", "Three.", "r1")])
    assert [c.id for c in second.conversations("alice")] == [conversation]
    assert [(t.role, t.content) for t in first.turns("alice", conversation)] == [
        ("user", "How many?"),
        ("assistant", "Three."),
    ]
    assert first.record_feedback("alice", "r1", "up") and second.feedback("r1")[0].rating == "up"


def test_the_migrations_build_exactly_the_schema_the_queries_use(open_store: OpenStore) -> None:
    with open_store().engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == _head_revision()
        assert compare_metadata(context, SCHEMA) == []


def test_appends_from_two_processes_at_once_keep_every_turn_in_order(postgres: str) -> None:
    # PostgreSQL only: one SQLite file serves one process, which orders its writers itself.
    location = new_database(postgres)
    stores = [HistoryStore(location), HistoryStore(location)]
    conversation = stores[0].create("alice", "Busy")
    errors: list[BaseException] = []

    def write(store: HistoryStore, name: str) -> None:
        try:
            for i in range(20):
                store.append("alice", conversation, [StoredTurn("user", f"{name}-{i}")])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(s, n)) for s, n in zip(stores, "ab", strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    written = [t.content for t in stores[1].turns("alice", conversation)]
    assert sorted(written) == sorted(f"{n}-{i}" for n in "ab" for i in range(20))
    for name in "ab":
        mine = [w for w in written if w.startswith(name)]
        assert mine == [f"{name}-{i}" for i in range(20)], "each writer's turns in its order"
    for store in stores:
        store.close()


# The first release's schema, as its history.py created it: files in users' data folders hold it.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, title TEXT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user, updated);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL, request_id TEXT, details TEXT,
    PRIMARY KEY (conversation_id, ordinal)
);
CREATE INDEX IF NOT EXISTS messages_by_request ON messages (request_id);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, user TEXT NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment TEXT NOT NULL DEFAULT '', time TEXT NOT NULL,
    PRIMARY KEY (request_id, user)
);
"""


def test_a_first_release_sqlite_file_is_migrated_in_place_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_RELEASE_SCHEMA)
        db.execute(
            "INSERT INTO conversations VALUES ('c1', 'alice', 'Old', '2026-01-01', '2026-01-01')"
        )
        db.execute("INSERT INTO messages VALUES ('c1', 0, 'user', 'Old question', NULL, NULL)")
        db.execute("INSERT INTO messages VALUES ('c1', 1, 'assistant', 'Old answer', 'r0', NULL)")
    db.close()

    history = HistoryStore(path)
    assert [c.id for c in history.conversations("alice")] == ["c1"]
    history.append("alice", "c1", [StoredTurn("user", "New question")])
    assert [t.content for t in history.turns("alice", "c1")] == [
        "Old question",
        "Old answer",
        "New question",
    ]
    assert history.record_feedback("alice", "r0", "up")
    with history.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SCHEMA) == []
    history.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (_head_revision(),)
        ]
        with pytest.raises(sqlite3.IntegrityError):  # the rebuilt table kept its CHECK
            db.execute("INSERT INTO messages VALUES ('c1', 9, 'system', 'x', NULL, NULL)")
    db.close()
    reopened = HistoryStore(path)
    assert len(reopened.turns("alice", "c1")) == 3, "opening again migrates nothing twice"
    reopened.close()


def test_an_unreachable_database_is_named_without_its_password() -> None:
    with pytest.raises(HistoryError) as refused:
        HistoryStore("postgresql://guardrag:s3cret-pw@127.0.0.1:1/history")
    message = str(refused.value)
    assert "127.0.0.1:1/history" in message and "history.url" in message
    assert "s3cret-pw" not in message


def test_history_url_in_settings_chooses_the_database(tmp_path: Path) -> None:
    assert local_settings(tmp_path).history_path == tmp_path / "history.sqlite"
    url = "postgresql://guardrag@db.internal:5432/guardrag"
    assert local_settings(tmp_path, history={"url": url}).history_path == url
