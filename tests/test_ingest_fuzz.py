"""Damaged and crafted files fail alone: each reads, or is refused with a ReadError that says
why, and an ingest run reports it and goes on with the rest of the folder."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import struct
import subprocess
import sys
import traceback
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import docx
import pytest
from docx.table import _Cell

from ingest.readers import READERS, Document, ReadError, ReadLimits, read_document
from ingest.run import IngestParts, build_ingest_parts, ingest_folder
from rag.settings import Settings
from tests.conftest import ROOT, local_settings
from tests.test_readers import PAGE, pdf_bytes

SEED = 20261206
MUTANTS_PER_FORMAT = 50


# Valid files, built here


def valid_pdf() -> bytes:
    return pdf_bytes(
        ["Leave is 27 days a year.", "Travel by train.\nBook two weeks ahead.", "Expenses"],
        title="Staff handbook",
    )


def valid_docx() -> bytes:
    """Headings, paragraphs, a list and a table with a horizontal and a vertical merge."""
    source = docx.Document()
    source.core_properties.title = "Staff handbook"
    source.add_heading("Staff handbook", level=1)
    source.add_paragraph("Annual leave is 27 days. " * 8)
    source.add_heading("Travel", level=2)
    source.add_paragraph("Go by train.", style="List Bullet")
    table = source.add_table(rows=3, cols=3)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"r{r}c{c}"
    table.cell(0, 0).merge(table.cell(0, 1))
    table.cell(1, 2).merge(table.cell(2, 2))
    out = io.BytesIO()
    source.save(out)
    return out.getvalue()


def valid_html() -> bytes:
    return PAGE.encode()


# Mutations


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    mutant = bytearray(data)
    for _ in range(rng.randint(1, 30)):
        mutant[rng.randrange(len(mutant))] = rng.randrange(256)
    return bytes(mutant)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def splice(data: bytes, rng: random.Random) -> bytes:
    start, at = rng.randrange(len(data)), rng.randrange(len(data))
    return data[:at] + data[start : start + rng.randint(1, 200)] + data[at:]


def damage_a_docx_part(data: bytes, rng: random.Random) -> bytes:
    """One XML part damaged inside a sound zip: byte damage to a deflated archive mostly
    stops at the CRC check, and this reaches lxml and python-docx."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        members = source.infolist()
        parts = [m.filename for m in members if m.filename.endswith((".xml", ".rels"))]
        target = rng.choice([*parts, "word/document.xml", "word/document.xml"])
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in members:
                body = source.read(member)
                if member.filename == target:
                    body = rng.choice([flip_bytes, truncate, splice])(body, rng)
                archive.writestr(member, body)
    return out.getvalue()


def mutants(data: bytes, rng: random.Random, count: int, docx_parts: bool) -> Iterator[bytes]:
    damages: list[Callable[[bytes, random.Random], bytes]] = [flip_bytes, truncate, splice]
    for _ in range(count):
        if docx_parts and rng.random() < 0.5:
            yield damage_a_docx_part(data, rng)
            continue
        mutant = rng.choice(damages)(data, rng)
        # A fifth are also cut short after their damage.
        yield truncate(mutant, rng) if mutant and rng.random() < 0.2 else mutant


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


VALID = {".pdf": valid_pdf, ".docx": valid_docx, ".html": valid_html}


def read_or_refuse(path: Path) -> Document | ReadError:
    """The document, or the ReadError that refused it. Any other exception fails the test,
    naming the file: pytest keeps tmp_path, so the mutant can be read again."""
    try:
        return read_document(path, ReadLimits())
    except ReadError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - anything but ReadError is the failure sought
        # The last frames only, and not chained: pytest takes minutes to format the 1,000
        # frames of a RecursionError.
        frames = "".join(traceback.format_exception(exc, limit=-4))
        raise AssertionError(f"{path} raised, not ReadError:\n{frames}") from None


@pytest.mark.parametrize("suffix", sorted(VALID))
def test_mutated_files_read_or_are_refused_with_a_read_error(suffix: str, tmp_path: Path) -> None:
    valid = VALID[suffix]()
    assert isinstance(read_or_refuse(write(tmp_path / f"valid{suffix}", valid)), Document)
    rng = random.Random(f"{SEED}{suffix}")
    outcomes = [
        read_or_refuse(write(tmp_path / f"mutant-{n}{suffix}", mutant))
        for n, mutant in enumerate(
            mutants(valid, rng, MUTANTS_PER_FORMAT, docx_parts=suffix == ".docx")
        )
    ]
    refused = [o for o in outcomes if isinstance(o, ReadError)]
    # The mutations do damage: a fuzz run where everything still reads proves nothing.
    assert refused, "no mutant was refused"
    assert all(str(exc) for exc in refused)


# Crafted files: each once crashed a reader (or would have), and now reads or is refused


def html_page(body: str, head: str = "", encoding: str = "utf-8") -> bytes:
    return f"<html><head>{head}</head><body>{body}</body></html>".encode(encoding)


def nested_divs(depth: int) -> bytes:
    # 3,000 levels is 33 KB: it raised RecursionError in the recursive walk.
    return html_page("<div>" * depth + "deep" + "</div>" * depth)


def nested_lists(depth: int) -> bytes:
    return html_page("<ul><li>" * depth + "deep" + "</li></ul>" * depth)


def patch_central_entry(data: bytes, member: str, offset: int, value: bytes) -> bytes:
    """`data` with bytes at `offset` of `member`'s central directory entry replaced: what
    zipfile checks a member against (CRC at 16, flags at 8)."""
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_length = struct.unpack("<H", data[at + 28 : at + 30])[0]
        if data[at + 46 : at + 46 + name_length] == member.encode():
            return data[: at + offset] + value + data[at + offset + len(value) :]
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{member} not in the archive")


def docx_with_bad_crc() -> bytes:
    data = valid_docx()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        crc = archive.getinfo("word/document.xml").CRC
    return patch_central_entry(data, "word/document.xml", 16, struct.pack("<I", crc ^ 0xFFFF))


def docx_with_bad_deflate_data() -> bytes:
    data = bytearray(valid_docx())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        member = archive.getinfo("word/document.xml")
    name_length, extra_length = struct.unpack(
        "<HH", data[member.header_offset + 26 : member.header_offset + 30]
    )
    start = member.header_offset + 30 + name_length + extra_length
    for at in range(start + 2, start + 12):
        data[at] ^= 0x55
    return bytes(data)


def docx_with_encrypted_flag() -> bytes:
    data = valid_docx()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        flags = archive.getinfo("word/document.xml").flag_bits
    return patch_central_entry(data, "word/document.xml", 8, struct.pack("<H", flags | 0x1))


def docx_with_document_xml(rewrite: Callable[[bytes], bytes]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(valid_docx())) as source:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in source.infolist():
                body = source.read(member)
                if member.filename == "word/document.xml":
                    body = rewrite(body)
                archive.writestr(member, body)
    return out.getvalue()


def docx_with_grid_span(span: int) -> bytes:
    """The merged first row of valid_docx() spanning `span` grid columns instead of 2."""

    def widen(xml: bytes) -> bytes:
        assert b'<w:gridSpan w:val="2"/>' in xml
        return xml.replace(b'<w:gridSpan w:val="2"/>', f'<w:gridSpan w:val="{span}"/>'.encode())

    return docx_with_document_xml(widen)


def docx_with_xml_nested(depth: int) -> bytes:
    deep = b"<w:sdt><w:sdtContent>" * depth + b"<w:p><w:r><w:t>deep</w:t></w:r></w:p>"
    deep += b"</w:sdtContent></w:sdt>" * depth
    return docx_with_document_xml(lambda xml: xml.replace(b"<w:body>", b"<w:body>" + deep))


def docx_with_merged_column(rows: int) -> bytes:
    """A two-column table whose first column is one cell merged down all `rows` rows; built
    through the XML, as python-docx's own row.cells recurses once per merged row."""
    source = docx.Document()
    table = source.add_table(rows=rows, cols=2)
    for n, row in enumerate(table.rows):
        first, second = row._tr.tc_lst
        first.vMerge = "restart" if n == 0 else "continue"
        _Cell(second, table).text = f"row {n}"
    _Cell(table.rows[0]._tr.tc_lst[0], table).text = "Merged"
    out = io.BytesIO()
    source.save(out)
    return out.getvalue()


def pdf_with_title_bytes(title: bytes) -> bytes:
    # Same length as the placeholder, so the cross-reference offsets stay right.
    placeholder = b"(" + b"x" * (len(title) - 2) + b")"
    return pdf_bytes(["Leave is 27 days."], title="x" * (len(title) - 2)).replace(
        placeholder, title
    )


def pdf_with_nested_arrays(depth: int) -> bytes:
    return pdf_bytes(["Leave is 27 days."], title="T").replace(
        b"<< /Title (T) >>", b"<< /Title (T) /Deep " + b"[" * depth + b"]" * depth + b" >>"
    )


# Each once crashed a reader (or would have) and now reads, holding this text.
CRAFTED_READ: dict[str, tuple[Callable[[], bytes], str]] = {
    "divs-3000.html": (lambda: nested_divs(3000), "deep"),
    "divs-19000.html": (lambda: nested_divs(19_000), "deep"),
    "lists-600.html": (lambda: nested_lists(600), "- " * 600 + "deep"),
    "spans-19000.html": (lambda: html_page("<span>" * 19_000 + "deep"), "deep"),
    "tables-10000.html": (lambda: html_page("<table><tr><td>" * 10_000 + "deep"), "deep"),
    # A codec that fails with UnicodeError itself, not UnicodeDecodeError.
    "undefined-charset.html": (
        lambda: html_page("<p>Café at noon</p>", '<meta charset="undefined">', "cp1252"),
        "Café at noon",
    ),
    "merged-1500-rows.docx": (lambda: docx_with_merged_column(1500), "Merged | row 1499"),
    "lone-surrogate-title.pdf": (lambda: pdf_with_title_bytes(b"<FEFFD800>"), "27 days"),
    "arrays-100000.pdf": (lambda: pdf_with_nested_arrays(100_000), "27 days"),
}

# Each once crashed a reader (or would have) and is now refused with a reason matching this.
CRAFTED_REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "bad-crc.docx": (
        docx_with_bad_crc,
        r"not a readable DOCX: damaged zip archive: Bad CRC-32 for file 'word/document\.xml'",
    ),
    "bad-deflate.docx": (
        docx_with_bad_deflate_data,
        "not a readable DOCX: corrupted compressed data in the zip archive: Error -3",
    ),
    "encrypted-member.docx": (
        docx_with_encrypted_flag,
        r"not a readable DOCX: word/document\.xml is encrypted in the zip",
    ),
    "ole2.docx": (
        lambda: bytes.fromhex("d0cf11e0a1b11ae1") + bytes(2000),
        "not a readable DOCX: an OLE2 file, not a zip: a password-protected DOCX",
    ),
    # Parsing it would take minutes (lexbor is quadratic in depth): refused before parsing.
    "lists-100000.html": (lambda: nested_lists(100_000), "HTML nested about 100002 elements"),
    "spans-100000.html": (
        lambda: html_page("<span>" * 100_000 + "deep"),
        "HTML nested about 100002 elements",
    ),
    "xml-nested-5000.docx": (
        lambda: docx_with_xml_nested(5000),
        "not a readable DOCX: malformed XML: Excessive depth",
    ),
}
CRAFTED = {**CRAFTED_READ, **CRAFTED_REFUSED}


@pytest.mark.parametrize("name", CRAFTED_READ)
def test_crafted_file_reads(name: str, tmp_path: Path) -> None:
    build, text = CRAFTED_READ[name]
    outcome = read_or_refuse(write(tmp_path / name, build()))
    assert isinstance(outcome, Document), f"{name} refused: {outcome}"
    assert text in outcome.text


@pytest.mark.parametrize("name", CRAFTED_REFUSED)
def test_crafted_file_is_refused_with_its_reason(name: str, tmp_path: Path) -> None:
    build, reason = CRAFTED_REFUSED[name]
    outcome = read_or_refuse(write(tmp_path / name, build()))
    assert isinstance(outcome, ReadError), f"{name} was read"
    assert re.match(reason, str(outcome)), str(outcome)


def test_a_huge_grid_span_costs_no_memory(tmp_path: Path) -> None:
    # python-docx's row.cells lists a cell once per grid column it spans: 10**7 columns were
    # an 80 MB tuple, and 10**20 filled memory until the kernel killed the process (too
    # dangerous a regression test to keep).
    path = write(tmp_path / "wide.docx", docx_with_grid_span(10**7))
    tracemalloc.start()
    document = read_document(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "r0c0 r0c1 | r0c2" in document.text
    assert peak < 20_000_000


def test_a_pdf_title_that_cannot_be_decoded_leaves_the_pdf_untitled(tmp_path: Path) -> None:
    document = read_document(write(tmp_path / "odd.pdf", pdf_with_title_bytes(b"<FEFFD800>")))
    assert document.title == ""
    assert document.page_at(document.text.index("27 days")) == 1


# The ingest path


@pytest.fixture
def parts(provisioned: Settings, tmp_path: Path) -> Iterator[IngestParts]:
    built = build_ingest_parts(local_settings(tmp_path / "data"))
    yield built
    built.store.close()


def test_mutants_and_crafted_files_fail_alone_while_the_rest_ingests(
    parts: IngestParts, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write(folder / "good.md", b"# Leave\n\nAnnual leave is 27 days.\n")
    rng = random.Random(SEED)
    for suffix, valid in VALID.items():
        for n, mutant in enumerate(mutants(valid(), rng, 8, docx_parts=suffix == ".docx")):
            write(folder / f"mutant-{n}{suffix}", mutant)
    for name in ["divs-3000.html", "lists-600.html", "bad-crc.docx", "bad-deflate.docx"]:
        write(folder / name, CRAFTED[name][0]())
    report = ingest_folder(folder, parts)
    files = sorted(p.name for p in folder.iterdir())
    added = sorted(name.removeprefix("docs/") for name in report.added)
    failed = dict(report.failed)
    assert sorted(added + [Path(p).name for p in failed]) == files
    assert {"good.md", "divs-3000.html", "lists-600.html"} <= set(added)
    assert {str(folder / "bad-crc.docx"), str(folder / "bad-deflate.docx")} <= set(failed)
    # Every refusal is one a reader knows: none reached the last-resort catch.
    assert not [r for r in failed.values() if r.startswith("unexpected")], failed


def test_an_unexpected_reader_error_fails_its_file_and_is_logged_with_its_traceback(
    parts: IngestParts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No real file reaches the last-resort catch once the readers know their failures, so a
    # stand-in .txt reader plays the next unknown bug; everything else is real.
    def buggy_reader(path: Path, limits: ReadLimits) -> Document:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setitem(READERS, ".txt", buggy_reader)
    folder = tmp_path / "docs"
    folder.mkdir()
    write(folder / "good.md", b"# Leave\n\nAnnual leave is 27 days.\n")
    write(folder / "notes.txt", b"Some notes.")
    with caplog.at_level(logging.WARNING, logger="ingest.run"):
        report = ingest_folder(folder, parts)
    assert report.added == ["docs/good.md"]
    [(path, reason)] = report.failed
    assert path == str(folder / "notes.txt")
    assert reason.startswith("unexpected RecursionError while reading it: maximum recursion")
    [record] = [r for r in caplog.records if r.name == "ingest.run"]
    assert str(folder / "notes.txt") in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RecursionError


def test_running_out_of_memory_still_stops_the_run(
    parts: IngestParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reader_out_of_memory(path: Path, limits: ReadLimits) -> Document:
        raise MemoryError

    monkeypatch.setitem(READERS, ".txt", reader_out_of_memory)
    folder = tmp_path / "docs"
    folder.mkdir()
    write(folder / "notes.txt", b"Some notes.")
    with pytest.raises(MemoryError):
        ingest_folder(folder, parts)


# The command line


def test_cli_ingest_reports_crafted_files_and_ingests_the_rest(
    provisioned: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write(folder / "good.md", b"# Leave\n\nAnnual leave is 27 days.\n")
    crafted = ["divs-3000.html", "lists-600.html", "bad-crc.docx", "bad-deflate.docx"]
    for name in crafted:
        write(folder / name, CRAFTED[name][0]())
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "ingest", str(folder), "--report", str(report_path)],
        cwd=ROOT,
        env={**os.environ, "GUARDRAG_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    report = json.loads(report_path.read_text())
    assert sorted(report["added"]) == ["docs/divs-3000.html", "docs/good.md", "docs/lists-600.html"]
    failed = dict(report["failed"])
    assert sorted(failed) == [str(folder / "bad-crc.docx"), str(folder / "bad-deflate.docx")]
    for path, reason in failed.items():
        assert f"failed {path}: {reason}" in output
    assert failed[str(folder / "bad-crc.docx")] == (
        "not a readable DOCX: damaged zip archive: Bad CRC-32 for file 'word/document.xml'"
    )
    assert failed[str(folder / "bad-deflate.docx")].startswith(
        "not a readable DOCX: corrupted compressed data in the zip archive: Error -3"
    )
