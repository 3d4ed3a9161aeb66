"""Nothing personal leaves: for every protected type, in the formats people write, no part of
the value (a digit group, a name token) is in the text the PII guard passes on, in the prompt
the model receives, or in what the chat and the API write to disk and to the logs.

A placeholder over part of a value is a leak too (`<IN_AADHAAR_1> 7730 1190`), so these tests
look for the value's pieces, not only the whole string.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from openai import AsyncOpenAI

from guardrails.pii import PresidioPII, PseudonymVault
from rag.compose import build_pii, prometheus_metrics
from rag.pipeline import Conversation, Pipeline
from rag.settings import ApiSettings, Settings
from tests.vllm_servers import free_port

# (type, sentence with the value, the value). Formats from the red team's findings and from
# each kind's common national forms.
MATRIX: list[tuple[str, str, str]] = [
    ("PERSON", "Hi, I am Ada Lovelace and I need help.", "Ada Lovelace"),
    ("PERSON", "My colleague Margaret Hamilton asked about leave.", "Margaret Hamilton"),
    ("PERSON", "Please ask Siobhan Ní Bhriain about the invoice.", "Siobhan Ní Bhriain"),
    ("PERSON", "The account holder is Zhang Wei (张伟) since 2019.", "Zhang Wei (张伟)"),
    ("PERSON", "Hi, this is Eivind Rønning. Please call me back.", "Eivind Rønning"),
    ("PERSON", "Customer Olena Kovalenko lives abroad now.", "Olena Kovalenko"),
    ("PERSON", "Our contact, Ahmed Al-Sayed, moved last spring.", "Ahmed Al-Sayed"),
    ("PERSON", "Report from Jiří Dvořák on the broken lantern.", "Jiří Dvořák"),
    ("PERSON", "Thanks Lars, I will ring tomorrow.", "Lars"),
    ("PHONE_NUMBER", "You can reach me at (591) 341-7776 x9150 tomorrow.", "(591) 341-7776 x9150"),
    ("PHONE_NUMBER", "My number is 001-206-269-0743 if the line drops.", "001-206-269-0743"),
    ("PHONE_NUMBER", "Ring 0151 496 0123 after lunch.", "0151 496 0123"),
    ("PHONE_NUMBER", "Call +44 20 7946 0958 for the office.", "+44 20 7946 0958"),
    ("PHONE_NUMBER", "I am on +46 (0)8 123 456 78 all week.", "+46 (0)8 123 456 78"),
    ("PHONE_NUMBER", "Mobile: 08-170 669 07.", "08-170 669 07"),
    ("PHONE_NUMBER", "Please phone +45 39 15 00 08 in Copenhagen.", "+45 39 15 00 08"),
    ("PHONE_NUMBER", "Text me on 06 12 34 56 78 when you land.", "06 12 34 56 78"),
    ("PHONE_NUMBER", "The Sydney desk is 02 4177 7631.", "02 4177 7631"),
    ("PHONE_NUMBER", "Our Utrecht line: +31 (0)30 123 4567.", "+31 (0)30 123 4567"),
    (
        "LOCATION",
        "Send it to 221B Baker Street, London NW1 6XE please.",
        "221B Baker Street, London NW1 6XE",
    ),
    ("LOCATION", "I live at 12 Rue de Rivoli, 75001 Paris now.", "12 Rue de Rivoli, 75001 Paris"),
    (
        "LOCATION",
        "The address is Gunhildsvej 174, 5812 Padborg.",
        "Gunhildsvej 174, 5812 Padborg",
    ),
    (
        "LOCATION",
        "Ship to Röhrichtweg 52, 58683 Güstrow by Friday.",
        "Röhrichtweg 52, 58683 Güstrow",
    ),
    (
        "LOCATION",
        "Deliver to 786 Timothy Summit Suite 625, Springfield, IL 62704.",
        "786 Timothy Summit Suite 625, Springfield, IL 62704",
    ),
    ("LOCATION", "Mail goes to PO Box 4412, Salem, OR 97301.", "PO Box 4412, Salem, OR 97301"),
    (
        "LOCATION",
        "He is deployed: PSC 9609, Box 0288, APO AE 09123.",
        "PSC 9609, Box 0288, APO AE 09123",
    ),
    ("DATE_OF_BIRTH", "Date of birth: 14/03/1987, please check.", "14/03/1987"),
    ("DATE_OF_BIRTH", "She was born on March 14, 1987 in Leeds.", "March 14, 1987"),
    ("UK_NINO", "My National Insurance number is QQ 12 34 56 C.", "QQ 12 34 56 C"),
    ("UK_NINO", "NI: AB123456C was on the payslip.", "AB123456C"),
    ("EMAIL_ADDRESS", "Write to ada.lovelace@example.com today.", "ada.lovelace@example.com"),
    ("CREDIT_CARD", "Card 4539 1488 0343 6467 was charged twice.", "4539 1488 0343 6467"),
    ("IBAN_CODE", "Pay into GB29 NWBK 6016 1331 9268 19 please.", "GB29 NWBK 6016 1331 9268 19"),
    ("US_SSN", "His SSN 521-44-9382 was on the form.", "521-44-9382"),
    ("IP_ADDRESS", "The login came from 192.168.10.24 at night.", "192.168.10.24"),
    ("IN_AADHAAR", "Aadhaar number: 4821 7730 1190 was typed in full.", "4821 7730 1190"),
    ("US_PASSPORT", "Her passport number is X4432178 and expires in May.", "X4432178"),
    ("US_BANK_NUMBER", "Wire it to bank account number 5521093384 today.", "5521093384"),
]

# Words of an address that say what kind of line it is, not whose: not worth checking.
_GENERIC = {"Street", "Rue", "Suite", "Box", "PSC", "APO", "London", "Paris"}


def value_pieces(value: str) -> list[str]:
    """The parts of a value that must not be seen: every run of 3+ digits, every name-like
    word of 3+ letters and a name in Chinese characters, besides the whole value."""
    digits = re.findall(r"\d{3,}", value)
    words = [w for w in re.findall(r"[^\W\d_]{3,}", value) if w[0].isupper()]
    own_script = re.findall(r"[\u3400-\u9fff]{2,}", value)  # 张伟
    return [value, *digits, *(w for w in words if w not in _GENERIC), *own_script]


def leaked(text: str, value: str) -> list[str]:
    """The pieces of `value` in `text`, each standing alone: `496` inside a score `0.49612` or
    `Kelly` inside `Kellyanne` is not the value."""
    return [
        piece
        for piece in value_pieces(value)
        if re.search(rf"(?<![^\W_]){re.escape(piece)}(?![^\W_])", text)
    ]


@pytest.fixture(scope="module")
def pii(provisioned: Settings) -> PresidioPII:
    guard = build_pii(provisioned)
    assert guard.available
    return guard


@pytest.mark.parametrize(("entity", "text", "value"), MATRIX, ids=[m[2] for m in MATRIX])
def test_no_part_of_a_protected_value_passes_the_guard(
    pii: PresidioPII, entity: str, text: str, value: str
) -> None:
    assert value in text
    vault = PseudonymVault()
    sanitized, findings = pii.pseudonymise(text, vault)
    assert leaked(sanitized, value) == [], sanitized
    assert vault.restore(sanitized) == text, "the asker gets the whole value back"
    covering = [f for f in findings if f.start <= text.index(value) < f.end]
    assert covering, f"no span starts the value: {sanitized}"


@pytest.mark.parametrize(
    "text",
    [
        "How many days of annual leave do I get after five years?",
        "Order 5521093384 shipped on Tuesday from the North Warehouse.",
        "Invoice INV-2024-0087 totals 1,280.50 EUR including VAT at 21 %.",
        "The meeting moved to Room 4.12 on the third floor at 14:30.",
        "Version 3.8.18 of the parser fixed bug 44721 reported by Support.",
        "Place an order via Email 24 hours ahead of the Annual Summit.",
        "The match ended 15-12 17-14 and the report is due 2025-01-15.",
        "We launch in Spring 2025 as planned.",
    ],
)
def test_texts_without_personal_data_pass_untouched(pii: PresidioPII, text: str) -> None:
    assert pii.find(text) == []


# ---- end to end: the prompt the model receives, the chat's history, the API -----------------

# One conversation that carries one value of each kind (two turns, as people write).
TURNS = [
    "Hi, I am Siobhan Kelly, phone 0151 496 0123 or +44 20 7946 0958, and I live at "
    "221B Baker Street, London NW1 6XE. How many days of annual leave do I get?",
    "Thanks. My date of birth is 14/03/1987, NI number QQ 12 34 56 C, Aadhaar number "
    "4821 7730 1190, e-mail siobhan.kelly@example.com. When is salary paid?",
]
VALUES = [
    "Siobhan Kelly",
    "0151 496 0123",
    "+44 20 7946 0958",
    "221B Baker Street, London NW1 6XE",
    "14/03/1987",
    "QQ 12 34 56 C",
    "4821 7730 1190",
    "siobhan.kelly@example.com",
]


def leaks_in(text: str, ignore: str = "") -> dict[str, list[str]]:
    """Pieces of VALUES in `text`, leaving out pieces `ignore` holds too (a handbook passage
    that happens to contain `123`)."""
    found = {}
    for value in VALUES:
        pieces = [p for p in leaked(text, value) if p not in ignore]
        if pieces:
            found[value] = pieces
    return found


@pytest.mark.slow
async def test_no_part_of_any_value_reaches_the_model_prompt(pipeline: Pipeline) -> None:
    conversation = Conversation(user="siobhan")
    for turn in TURNS:
        answer = await pipeline.ask(turn, conversation)
        assert answer.prompt, "the question was answered, so a prompt was sent"
        sent = "\n".join(m.content for m in answer.prompt)
        passages = "\n".join(c.text for c in answer.citations)
        assert leaks_in(sent, ignore=passages) == {}, sent
        assert "<PHONE_NUMBER_" in sent or "<DATE_OF_BIRTH_" in sent


def database_text(path: Path) -> str:
    """Every row of every table, as text."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert tables, f"{path} has no tables"
        return "\n".join(
            " ".join(str(cell) for cell in row)
            for table in tables
            # Table names come from sqlite_master itself.
            for row in db.execute(f'SELECT * FROM "{table}"')
        )


@pytest.mark.slow
async def test_a_chat_conversation_leaves_no_value_in_history_audit_or_logs(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ui.chat import AUTO_MODEL, ChatHandlers
    from ui.documents import DocumentLibrary
    from ui.history import HistoryStore

    settings = pipeline.settings.model_copy(update={"data_dir": tmp_path})
    chat_pipeline = Pipeline(settings, pipeline.stages)
    # The audit log is the shared pipeline's (its stages were built with it): read what this
    # test adds to it.
    audit_path = pipeline.settings.audit_path
    audit_start = audit_path.stat().st_size if audit_path.exists() else 0
    history = HistoryStore(tmp_path / "history.sqlite")
    handlers = ChatHandlers(chat_pipeline, settings.chat, history, DocumentLibrary(settings))
    session = None
    with caplog.at_level(logging.DEBUG):
        for turn in TURNS:
            async for update in handlers.stream_answer(turn, session, AUTO_MODEL, 5, None):  # type: ignore[arg-type]
                session = update[1]
    history.close()
    stored = database_text(tmp_path / "history.sqlite")
    assert "<PHONE_NUMBER_" in stored, "the pseudonymised question was stored"
    assert leaks_in(stored) == {}
    audit = audit_path.read_bytes()[audit_start:].decode("utf-8")
    assert audit.strip(), "the requests were audited"
    assert leaks_in(audit) == {}
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert leaks_in(logs) == {}


async def _serve(pipeline: Pipeline, settings: Settings) -> AsyncIterator[str]:
    from ui.api import build_api

    app = build_api(Pipeline(settings, pipeline.stages), settings, prometheus_metrics())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 60
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline, "the API server did not start"
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.mark.slow
async def test_an_api_conversation_leaves_no_value_in_the_prompt_audit_or_logs(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = "leak-test-key-01"
    settings = pipeline.settings.model_copy(
        update={
            "data_dir": tmp_path,
            "api": ApiSettings(keys=(key,), rate_limit="1000/minute"),  # type: ignore[arg-type]
        }
    )
    audit_path = pipeline.settings.audit_path
    audit_start = audit_path.stat().st_size if audit_path.exists() else 0
    with caplog.at_level(logging.DEBUG):
        async for url in _serve(pipeline, settings):
            api = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)
            reply = await api.chat.completions.create(
                model=next(iter(settings.generation.models)),
                messages=[
                    {"role": "user", "content": TURNS[0]},
                    {"role": "assistant", "content": "You get 25 days of annual leave."},
                    {"role": "user", "content": TURNS[1]},
                ],
            )
            assert reply.choices[0].message.content is not None
    audit = audit_path.read_bytes()[audit_start:].decode("utf-8")
    assert audit.strip(), "the request was audited"
    assert leaks_in(audit) == {}
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert leaks_in(logs) == {}
    for database in tmp_path.rglob("*.sqlite"):
        assert leaks_in(database_text(database)) == {}
