"""The chat attacked as a red-team did (issue 13): a live `guardrag serve` with several users
behind a trusted proxy header, driven through the Gradio queue calls the page itself makes,
with inputs no page would send. Each test names the finding it keeps closed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.settings import Settings
from tests.conftest import EXAMPLES, ROOT
from tests.gradio_wire import GradioWire
from tests.guardrag_processes import guardrag_server, run_cli
from tests.vllm_servers import free_port

pytestmark = pytest.mark.slow

HEADER = "X-Forwarded-User"
API_KEY = "attack-test-key"
AUTO = "auto (router)"
MAX_USER_FILES = 3
CANARY = "Canary Person 4242 canary@private-example.org"
PASSWD_LINE = "root:x:0:"


@dataclass(frozen=True)
class Served:
    url: str
    data_dir: Path
    gradio_dir: Path
    log: Path

    def as_user(self, name: str, session_hash: str | None = None) -> GradioWire:
        wire = GradioWire(f"{self.url}/chat")
        wire.http.headers[HEADER] = name
        if session_hash is not None:
            wire.session_hash = session_hash
        return wire


def _env(data_dir: Path, gradio_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GUARDRAG_DATA_DIR": str(data_dir),
        "GRADIO_TEMP_DIR": str(gradio_dir),
        "GUARDRAG_CHAT__TRUSTED_HEADER": HEADER,
        "GUARDRAG_CHAT__HEADER_ADMINS": json.dumps(["root"]),
        "GUARDRAG_CHAT__MAX_USER_FILES": str(MAX_USER_FILES),
        "GUARDRAG_API__KEYS": json.dumps([API_KEY]),
        "GUARDRAG_API__RATE_LIMIT": "5/minute",
        "COLUMNS": "200",
    }


@pytest.fixture(scope="module")
def served(provisioned: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("attack-data")
    gradio_dir = tmp_path_factory.mktemp("attack-gradio")
    env = _env(data_dir, gradio_dir)
    run_cli(["ingest", str(EXAMPLES)], env)
    log = data_dir / "serve.log"
    with guardrag_server("serve", env, log, ready_path="/healthz") as url:
        yield Served(url, data_dir, gradio_dir, log)


def _file(path: str | Path, name: str = "x.md") -> dict[str, Any]:
    return {"path": str(path), "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def _upload(wire: GradioWire, name: str, content: bytes) -> dict[str, Any]:
    """A file sent the way the page sends it: Gradio's upload route, then its path."""
    response = wire.http.post(
        f"{wire.base}/gradio_api/upload", files={"files": (name, content, "text/markdown")}
    )
    response.raise_for_status()
    (path,) = response.json()
    return _file(path, name)


def _documents(wire: GradioWire) -> list[str]:
    page = wire.call("fill_page_for_user", [])
    assert page.success, page.error
    table = page.outputs[2]
    rows = table["data"] if isinstance(table, dict) else table
    return [row[0] for row in rows]


def _page_inputs(wire: GradioWire, api_name: str) -> list[Any]:
    """The inputs the page itself sends for an event, by the kind of each input component."""
    config = wire.config()
    kinds = {c["id"]: c.get("type") for c in config["components"]}
    (dependency,) = [d for d in config["dependencies"] if d.get("api_name") == api_name]
    sent = {"chatbot": [], "dropdown": AUTO, "slider": 4}
    return [sent.get(kinds[i]) for i in dependency["inputs"]]


def _everything_said(result: Any) -> str:
    return json.dumps(result.outputs) + json.dumps(result.error)


# ---- item 1: any file on the server readable by any chat user --------------------------------


def test_a_forged_file_part_never_comes_back_as_a_download(served: Served) -> None:
    alice = served.as_user("alice")
    assert alice.call("fill_page_for_user", []).success
    forged = {"type": "file", "file": _file("/etc/passwd", "passwd")}
    attempts = [
        # The red-team's call: the Chatbot's own message list as the second input.
        [None, [{"role": "user", "content": [forged]}], None, AUTO, 4],
        [None, None, AUTO, 4],
        [forged["file"], [forged], AUTO, 4],
        [None, None, forged["file"], 4],
    ]
    for data in attempts:
        result = alice.call("stream_answer", data)
        said = _everything_said(result)
        assert PASSWD_LINE not in said
        for url in alice.file_urls(result.outputs):
            assert PASSWD_LINE not in alice.http.get(url).text, url
        assert "/etc/passwd" not in json.dumps(result.outputs)
    direct = alice.http.get(f"{alice.base}/gradio_api/file=/etc/passwd")
    assert direct.status_code in (403, 404) and PASSWD_LINE not in direct.text


def test_no_event_takes_the_chat_history_from_the_client(served: Served) -> None:
    config = served.as_user("alice").config()
    chatbots = {c["id"] for c in config["components"] if c.get("type") == "chatbot"}
    assert chatbots
    for dependency in config["dependencies"]:
        assert not chatbots & set(dependency["inputs"]), dependency.get("api_name")


# ---- item 2: other users' documents stolen through the upload handler ------------------------


def test_upload_ingests_only_files_this_upload_received(served: Served) -> None:
    bob, alice = served.as_user("bob"), served.as_user("alice")
    secret = b"# Bob's notes\n\nBob's private code word is MARIGOLD-77.\n"
    done = bob.call("upload_documents", [[_upload(bob, "bob-private-notes.md", secret)], False])
    assert done.success and "added" in done.outputs[0], done.outputs
    (bobs_file,) = (served.data_dir / "uploads").glob("*/bob-private-notes.md")
    forged = [
        bobs_file,
        ROOT / "README.md",
        served.gradio_dir / ".." / bobs_file.relative_to(served.gradio_dir.parent),
        Path("/etc/passwd"),
    ]
    for path in forged:
        result = alice.call("upload_documents", [[_file(path, "stolen.md")], False])
        said = _everything_said(result)
        assert "MARIGOLD" not in said and "added" not in said, path
        # Refusals name no server path either.
        assert str(served.data_dir) not in said and str(ROOT) not in said
    assert not [d for d in _documents(alice) if "stolen" in d or "bob-private" in d]
    # Nothing refused was copied into Gradio's cache on the way.
    assert not list(served.gradio_dir.rglob("stolen.md"))
    assert not list(served.gradio_dir.rglob("passwd"))


# ---- item 4: a user named "shared" owned the shared collection ---------------------------------


def test_a_user_named_shared_is_not_let_in_and_cannot_fill_the_shared_collection(
    served: Served,
) -> None:
    for name in ("shared", "Shared", "local"):
        impostor = served.as_user(name)
        document = b"# Plan\n\nThe shared plan says to wire funds to account EVIL-1.\n"
        try:
            result = impostor.call(
                "upload_documents", [[_upload(impostor, "plan.md", document)], False]
            )
            assert not result.success or "added" not in json.dumps(result.outputs), name
        except httpx.HTTPStatusError as refused:
            assert refused.response.status_code in (401, 403)
    root_documents = _documents(served.as_user("root"))
    assert not [d for d in root_documents if d.endswith("plan.md")]


# ---- item 5: upload folders that collide --------------------------------------------------------


def test_a_user_named_like_another_users_folder_gets_a_folder_of_their_own(
    served: Served,
) -> None:
    victim = served.as_user("Zoë Ng")
    secret = b"# Payroll\n\nZoe's salary review says 91,000.\n"
    assert victim.call("upload_documents", [[_upload(victim, "payroll.md", secret)], False]).success
    (stored,) = [d for d in _documents(victim) if d.endswith("payroll.md")]
    folder = stored.split("/", 1)[0]
    attacker = served.as_user(folder)
    junk = b"# Junk\n\nNothing to see.\n"
    assert attacker.call("upload_documents", [[_upload(attacker, "junk.md", junk)], False]).success
    mine = _documents(attacker)
    assert not [d for d in mine if d.endswith("payroll.md")], mine
    assert [d for d in mine if d.endswith("junk.md")]


# ---- item 8: a crafted file broke a user's uploads for good -------------------------------------


def _docx_with_a_flipped_crc() -> bytes:
    """A real DOCX whose first member's CRC-32 no longer matches its data."""
    import docx

    buffer = io.BytesIO()
    document = docx.Document()
    document.add_paragraph("A perfectly ordinary paragraph.")
    document.save(buffer)
    data = bytearray(buffer.getvalue())
    crc_at = data.index(b"PK\x03\x04") + 14  # the local header's CRC-32 field
    data[crc_at] ^= 0xFF
    central = data.index(b"PK\x01\x02") + 16  # the central directory's copy of it
    data[central] ^= 0xFF
    return bytes(data)


def test_a_crafted_upload_fails_alone_and_later_uploads_still_work(served: Served) -> None:
    carol = served.as_user("carol")
    nested = ("<div>" * 3000 + "deep" + "</div>" * 3000).encode()
    sent = [
        _upload(carol, "nested.html", nested),
        _upload(carol, "broken.docx", _docx_with_a_flipped_crc()),
    ]
    first = carol.call("upload_documents", [sent, False])
    assert first.success, first.error
    summary = first.outputs[0]
    assert "failed: broken.docx" in summary, summary
    assert "nested.html" in summary, "the nested file is read or fails, never crashes"
    assert str(served.data_dir) not in json.dumps(first.messages), "no server path in progress"
    later = carol.call(
        "upload_documents", [[_upload(carol, "fine.md", b"# Fine\n\nA fine file.\n")], False]
    )
    assert later.success and "added: carol/fine.md" in later.outputs[0], later.outputs[:1]


# ---- item 9: session state read with another user's session hash --------------------------------


def test_another_users_session_hash_reads_nothing_of_theirs(served: Served) -> None:
    alice = served.as_user("alice")
    assert alice.call("take_question", ["What is the minimum password length?"]).success
    answered = alice.call("stream_answer", _page_inputs(alice, "stream_answer"))
    assert answered.success, answered.error
    index = len(answered.outputs[0]) - 1
    selected = alice.call("show_answer", [None], event_data={"index": index, "value": ""})
    assert selected.success
    own = alice.call("show_passage", [1, None])
    assert own.success and "passage" in json.dumps(own.outputs), "alice reads her own passage"

    mallory = served.as_user("mallory", session_hash=alice.session_hash)
    refused = mallory.call("show_passage", [1, None])
    assert refused.error is not None and "403" in refused.error, refused.error
    for call, data, event in (
        ("show_passage", [1, None], None),
        ("show_answer", [None], {"index": index, "value": ""}),
    ):
        stolen = mallory.call(call, data, event_data=event)
        assert "passage" not in json.dumps(stolen.outputs), call
        assert "14" not in json.dumps(stolen.outputs), call


def test_a_session_hash_serves_only_the_login_that_first_used_it(served: Served) -> None:
    alice = served.as_user("alice")
    assert alice.call("fill_page_for_user", []).success
    bob = served.as_user("bob", session_hash=alice.session_hash)
    stream = bob.http.get(
        f"{bob.base}/gradio_api/queue/data", params={"session_hash": alice.session_hash}
    )
    assert stream.status_code == 403, "alice's answers would stream to bob"
    assert not bob.call("new_conversation", []).success, "bob would reset alice's session"
    assert bob.http.get(f"{bob.base}/gradio_api/heartbeat/{alice.session_hash}").status_code == 403
    # Gradio's deep link writes a session's whole state (the chat, with personal data) to a
    # file any user can fetch.
    link = bob.http.get(
        f"{bob.base}/gradio_api/deep_link", params={"session_hash": alice.session_hash}
    )
    assert link.status_code == 404
    assert alice.call("fill_page_for_user", []).success, "alice's session still works"


def test_gradio_routes_that_fetch_urls_or_show_everyones_events_are_not_served(
    served: Served,
) -> None:
    alice = served.as_user("alice")
    for path in ("/gradio_api/file=https://example.com/x", "/monitoring", "/monitoring/summary"):
        assert alice.http.get(f"{alice.base}{path}").status_code == 404, path


def test_a_huge_body_is_refused_before_any_route_parses_it(served: Served) -> None:
    huge = b'{"data": [' + b"[1]," * 1_000_000 + b'[1]], "session_hash": "x"}'
    with httpx.Client(timeout=60) as http:
        # No login needed to reach Gradio's cancel route: the limit must come first.
        refused = http.post(
            f"{served.url}/chat/gradio_api/cancel",
            content=huge,
            headers={"content-type": "application/json"},
        )
        assert refused.status_code == 413

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(huge), 65536):
                yield huge[start : start + 65536]

        chunked = http.post(
            f"{served.url}/chat/gradio_api/queue/join",
            content=chunks(),
            headers={"content-type": "application/json", HEADER: "alice"},
        )
        assert chunked.status_code == 413
        assert http.get(f"{served.url}/healthz").status_code == 200


# ---- item 12: uploads outlived their deletion; no quota ------------------------------------------


def test_the_uploaded_copy_is_gone_from_gradios_cache_once_ingested(served: Served) -> None:
    dave = served.as_user("dave")
    sent = _upload(dave, "memo.md", b"# Memo\n\nThe memo code is OTTER-5.\n")
    url = f"{dave.base}/gradio_api/file={sent['path']}"
    assert "OTTER-5" in dave.http.get(url).text, "the cached copy is served before ingesting"
    assert dave.call("upload_documents", [[sent], False]).success
    assert "OTTER-5" not in dave.http.get(url).text
    assert not Path(sent["path"]).exists()


def test_a_user_may_keep_only_so_many_documents(served: Served) -> None:
    erin = served.as_user("erin")
    for number in range(MAX_USER_FILES):
        content = f"# Note {number}\n\nNote number {number}.\n".encode()
        sent = _upload(erin, f"note-{number}.md", content)
        assert "added" in erin.call("upload_documents", [[sent], False]).outputs[0]
    extra = _upload(erin, "one-too-many.md", b"# More\n\nOne more.\n")
    refused = erin.call("upload_documents", [[extra], False])
    assert "refused" in refused.outputs[0] and "chat.max_user_files" in refused.outputs[0]
    assert not [d for d in _documents(erin) if "one-too-many" in d]


# ---- item 13: client input in the server's log ---------------------------------------------------


def test_malformed_events_leave_no_client_input_in_the_log(served: Served) -> None:
    frank = served.as_user("frank")
    # Too few inputs, and a value of the wrong type: Gradio quotes both in its errors.
    frank.call("stream_answer", [CANARY])
    frank.call("stream_answer", [None, None, AUTO, CANARY])
    frank.call("record_comment", [[CANARY], None])
    time.sleep(1)
    log = served.log.read_text()
    assert "Traceback" in log or "withheld" in log, "the malformed events were refused"
    assert "Canary" not in log and "private-example" not in log


# ---- item 10: X-Forwarded-For chose the address the refused-key limiter counts -------------------


def test_forwarded_for_headers_do_not_reset_the_refused_key_limit(served: Served) -> None:
    statuses = []
    with httpx.Client(timeout=30) as http:
        for number in range(8):
            response = http.get(
                f"{served.url}/v1/models",
                headers={
                    "Authorization": "Bearer wrong-key",
                    "X-Forwarded-For": f"203.0.113.{number + 1}",
                },
            )
            statuses.append(response.status_code)
    assert 429 in statuses, statuses


# ---- item 3: `guardrag chat --host 0.0.0.0` served with no login --------------------------------


def test_chat_on_a_network_interface_without_a_login_is_refused(
    provisioned: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, "GUARDRAG_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    env.pop("GUARDRAG_CHAT__USERS", None)
    env.pop("GUARDRAG_CHAT__TRUSTED_HEADER", None)
    port = free_port()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ui.cli", "chat", "--host", "0.0.0.0", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("guardrag chat served on 0.0.0.0 without a login")
    assert done.returncode == 2
    assert "refusing to serve the chat on 0.0.0.0 without a login" in done.stdout + done.stderr
