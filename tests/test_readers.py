import tracemalloc
import zipfile
from pathlib import Path

import docx
import pytest

from ingest.readers import ReadError, read_document, read_docx, read_html, read_pdf

EVAL_DOCS = Path(__file__).resolve().parent.parent.parent / "shared/eval-data/retrieval_qa/docs"


def pdf_bytes(pages: list[str], title: str | None = None, encrypted: bool = False) -> bytes:
    """A minimal PDF written by hand: Helvetica lines per page (split on "\n"; "" for an empty
    page)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        lines = " T* ".join(f"({line}) Tj" for line in text.split("\n"))
        content = f"BT /F1 12 Tf 14 TL 72 720 Td {lines} ET".encode() if text else b""
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    trailer = "/Root 1 0 R"
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
        trailer += f" /Info {len(objects)} 0 R"
    if encrypted:
        # The standard security handler with owner and user hashes no password matches: to
        # PDFium this is a PDF locked with a password nobody gave it.
        owner_hash, user_hash = "ab" * 32, "cd" * 32
        objects.append(
            f"<< /Filter /Standard /V 1 /R 2 /P -4 /O <{owner_hash}> /U <{user_hash}> >>".encode()
        )
        trailer += f" /Encrypt {len(objects)} 0 R /ID [<{'01' * 16}> <{'01' * 16}>]"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# PDF


def test_pdf_pages_are_read_in_order_with_their_page_numbers(tmp_path: Path) -> None:
    pages = ["Hello page one", "Leave is 27 days on page two", "Travel by train on page three"]
    path = write(tmp_path / "handbook.pdf", pdf_bytes(pages, title="Staff handbook"))
    document = read_document(path)
    assert not document.markdown
    assert document.title == "Staff handbook"
    for number, text in enumerate(pages, start=1):
        assert document.page_at(document.text.index(text)) == number
    assert document.text.index(pages[0]) < document.text.index(pages[1])
    assert document.page_at(document.text.index("27 days")) == 2


def test_pdf_without_title_metadata_has_an_empty_title(tmp_path: Path) -> None:
    path = write(tmp_path / "untitled.pdf", pdf_bytes(["Some text"]))
    assert read_pdf(path).title == ""


def test_truncated_pdf_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.pdf", b"%PDF-1.4 garbage")
    with pytest.raises(ReadError, match="not a readable PDF"):
        read_pdf(path)


def test_file_that_is_not_a_pdf_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.pdf", b"These are plain notes, saved with the wrong name.\n")
    with pytest.raises(ReadError, match="not a readable PDF"):
        read_document(path)


def test_pdf_over_the_page_limit_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "long.pdf", pdf_bytes(["one", "two"]))
    with pytest.raises(ReadError, match=r"2 pages is over the limit of 1 \(ingest.max_pdf_pages\)"):
        read_pdf(path, max_pages=1)


def test_pdf_without_a_text_layer_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "scan.pdf", pdf_bytes([""]))
    with pytest.raises(ReadError, match="no text layer"):
        read_pdf(path)


def test_password_protected_pdf_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.pdf", pdf_bytes(["secret"], encrypted=True))
    with pytest.raises(ReadError, match="encrypted PDF: a password is needed"):
        read_pdf(path)


# DOCX


def test_docx_keeps_headings_paragraphs_and_tables_in_body_order(tmp_path: Path) -> None:
    source = docx.Document()
    source.add_heading("Staff handbook", level=1)
    source.add_paragraph("Welcome to the company.")
    source.add_heading("Leave", level=2)
    table = source.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("Kind", "Days"), ("Annual", "27")], strict=True):
        for cell, text in zip(row.cells, cells, strict=True):
            cell.text = text
    source.add_paragraph("Ask your manager before booking.")
    source.save(str(tmp_path / "handbook.docx"))

    document = read_document(tmp_path / "handbook.docx")

    assert document.markdown
    assert document.title == "Staff handbook"
    lines = document.text.splitlines()
    assert "# Staff handbook" in lines
    assert "## Leave" in lines
    assert "Kind | Days" in lines
    assert "Annual | 27" in lines
    text = document.text
    assert text.index("## Leave") < text.index("Annual | 27") < text.index("Ask your manager")


def test_docx_title_comes_from_core_properties_first(tmp_path: Path) -> None:
    source = docx.Document()
    source.core_properties.title = "Policy 7"
    source.add_heading("Overview", level=1)
    source.save(str(tmp_path / "policy.docx"))
    assert read_docx(tmp_path / "policy.docx").title == "Policy 7"


def test_docx_zip_bomb_is_refused_without_unpacking_it(tmp_path: Path) -> None:
    # A real Word package whose body is 50 MB of zeros packed into about 50 KB: without the
    # guard python-docx would load all 50 MB before its XML parser gave up.
    docx.Document().save(str(tmp_path / "empty.docx"))
    path = tmp_path / "bomb.docx"
    with (
        zipfile.ZipFile(tmp_path / "empty.docx") as template,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        for member in template.infolist():
            if member.filename != "word/document.xml":
                archive.writestr(member, template.read(member))
        with archive.open("word/document.xml", "w") as body:
            for _ in range(50):
                body.write(bytes(1_000_000))
    assert path.stat().st_size < 500_000

    tracemalloc.start()
    with pytest.raises(ReadError, match="decompression bomb"):
        read_docx(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Refused before unpacking: 5 MB at most held for an archive of 50 MB of XML. (How fast
    # is for benchmarks: a timed assertion here would fail on a loaded machine.)
    assert peak < 5_000_000


def test_docx_over_the_unzipped_size_limit_is_refused(tmp_path: Path) -> None:
    source = docx.Document()
    source.add_paragraph("A perfectly ordinary document.")
    source.save(str(tmp_path / "ordinary.docx"))
    with pytest.raises(ReadError, match=r"ingest.max_unzipped_bytes.*decompression bomb"):
        read_docx(tmp_path / "ordinary.docx", max_unzipped_bytes=1000)


def test_small_member_that_compresses_well_is_not_taken_for_a_bomb(tmp_path: Path) -> None:
    source = docx.Document()
    source.add_paragraph("A document with a blank picture.")
    source.save(str(tmp_path / "picture.docx"))
    with zipfile.ZipFile(tmp_path / "picture.docx", "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/blank.bmp", bytes(500_000))
    assert "blank picture" in read_docx(tmp_path / "picture.docx").text


def test_random_bytes_named_docx_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "random.docx", bytes(range(256)) * 40)
    with pytest.raises(ReadError, match="not a readable DOCX"):
        read_document(path)


def test_zip_that_is_not_a_word_document_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "archive.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a Word document")
    with pytest.raises(ReadError, match="not a readable DOCX"):
        read_docx(path)


# HTML

PAGE = """<!DOCTYPE html>
<html><head><title>Leave policy</title>
<style>body { color: red }</style>
<script>alert('x')</script></head>
<body>
<header><a href="/">Acme intranet</a></header>
<nav><ul><li><a href="/">Home</a></li><li><a href="/jobs">Jobs</a></li></ul></nav>
<main>
  <h1>Leave   policy</h1>
  <p>Annual leave is
     <b>27 days</b>.<!-- reviewed 2024 --> Carry over is allowed.</p>
  <h2>How to book</h2>
  <ul><li>Ask your manager</li><li>Record it in <a href="/hr">HR</a></li></ul>
  <pre>days = 27
# not a heading</pre>
</main>
<footer>Copyright Acme</footer>
<script>trackVisit()</script>
</body></html>
"""


def test_html_main_content_becomes_markdown_without_page_chrome(tmp_path: Path) -> None:
    document = read_document(write(tmp_path / "leave.html", PAGE.encode()))
    assert document.markdown
    assert document.title == "Leave policy"
    blocks = document.text.split("\n\n")
    assert blocks[:3] == [
        "# Leave policy",
        "Annual leave is 27 days. Carry over is allowed.",
        "## How to book",
    ]
    assert "- Ask your manager" in blocks
    assert "- Record it in HR" in blocks
    assert "```\ndays = 27\n# not a heading\n```" in blocks
    for chrome in ["alert", "trackVisit", "color: red", "Acme intranet", "Jobs", "Copyright"]:
        assert chrome not in document.text


def test_html_article_keeps_its_own_header_and_table_rows(tmp_path: Path) -> None:
    page = """<html><body><header>Site banner</header>
    <article><header><h1>Expenses</h1></header>
    <table><tr><th>Item</th><th>Limit</th></tr><tr><td>Hotel</td><td>120 EUR</td></tr></table>
    </article></body></html>"""
    document = read_html(write(tmp_path / "expenses.htm", page.encode()))
    assert document.text == "# Expenses\n\nItem | Limit\n\nHotel | 120 EUR"
    assert document.title == "Expenses"


def test_html_declared_charset_decodes_what_detection_gets_wrong(tmp_path: Path) -> None:
    page = '<html><head><meta charset="koi8-r"></head><body><p>Привет, мир</p></body></html>'
    document = read_html(write(tmp_path / "hello.html", page.encode("koi8-r")))
    assert document.text == "Привет, мир"
    assert document.decoded_as == "koi8-r, as the file declares"


def test_utf8_text_reports_no_decoding_and_broken_utf8_says_how_it_was_read(
    tmp_path: Path,
) -> None:
    assert (
        read_document(write(tmp_path / "ok.md", "# Café\n\nOpen at noon.".encode())).decoded_as
        == ""
    )
    # A UTF-8 file cut mid-character (the last byte of "é" lost) is no longer UTF-8.
    broken = "Le café ouvre à midi. Les crêpes sont servies.".encode()[:-2] + b"\xc3"
    document = read_document(write(tmp_path / "broken.txt", broken))
    assert document.decoded_as.endswith("detected (not valid UTF-8)")


def test_html_with_only_a_script_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "app.html", b"<html><body><script>render('app')</script></body></html>")
    with pytest.raises(ReadError, match="no text in the HTML page"):
        read_document(path)


# The development documents, read as ingest reads them


@pytest.mark.skipif(not EVAL_DOCS.exists(), reason=f"{EVAL_DOCS} is not beside this checkout")
@pytest.mark.parametrize("suffix", [".pdf", ".docx", ".html"])
def test_eval_documents_read_fully(suffix: str) -> None:
    paths = sorted(EVAL_DOCS.glob(f"*{suffix}"))
    assert paths
    for path in paths:
        document = read_document(path)
        assert len(document.text) > 2000, path
        assert document.title, path
        if suffix == ".pdf":
            assert document.page_at(0) == 1
            assert document.page_at(len(document.text) - 1) == len(document.page_starts)
