"""Reading one file into text: Markdown, plain text, PDF (text layer), DOCX and HTML, each
format one function registered by extension, each refusal a ReadError that says why."""

from __future__ import annotations

import bisect
import codecs
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docx
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from docx.document import Document as DocxDocument
from docx.opc.exceptions import PackageNotFoundError
from docx.oxml.exceptions import InvalidXmlError
from docx.table import Table, _Cell
from docx.text.paragraph import Paragraph
from lxml.etree import XMLSyntaxError
from selectolax.lexbor import LexborHTMLParser, LexborNode


class ReadError(Exception):
    """The file cannot be read as a document; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Document:
    """A file as text. Formats with structure express it as Markdown headings (`markdown`
    True), so one chunker serves all; paged formats give each page's start offset."""

    text: str
    markdown: bool
    title: str = ""
    # Character offset in `text` where each page starts; page n (1-based) starts at
    # page_starts[n - 1]. Empty for formats without pages.
    page_starts: tuple[int, ...] = ()
    # How text that was not UTF-8 was decoded ("cp1252, detected"); empty for UTF-8 text and
    # for formats that carry their own encoding (PDF, DOCX). Ingest reports it.
    decoded_as: str = ""

    def page_at(self, offset: int) -> int | None:
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)


@dataclass(frozen=True)
class DecodedText:
    text: str
    # Empty for UTF-8; otherwise the encoding used and how it was chosen.
    decoded_as: str = ""


def decode_text(data: bytes, declared_encoding: str | None = None) -> DecodedText:
    """Bytes to text with the encoding detected, never guessed silently: undetectable or
    binary content is an error naming the reason, and text that is not UTF-8 says how it was
    decoded. An encoding the file declares (an HTML `<meta charset>`) is tried after UTF-8 and
    before detection."""
    if not data:
        raise ReadError("empty file")
    if b"\x00" in data[:8192]:
        raise ReadError("binary content (NUL bytes), not text")
    try:
        return DecodedText(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    if declared_encoding:
        try:
            return DecodedText(
                data.decode(declared_encoding), f"{declared_encoding}, as the file declares"
            )
        # UnicodeError, not only UnicodeDecodeError: a page may declare a codec such as
        # "undefined", which fails with the base class.
        except (LookupError, UnicodeError):
            pass  # a wrong or unknown declaration is common; detection decides instead
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise ReadError("not valid UTF-8 and no other text encoding fits")
    # Short texts often fit several single-byte encodings equally well (é is valid cp1250 as
    # well as cp1252). On a tie, Windows-1252, the commonest legacy encoding of Western
    # documents, wins over whichever the detector happened to list first.
    tied = [
        m
        for m in matches
        if (m.percent_chaos, m.percent_coherence) == (best.percent_chaos, best.percent_coherence)
    ]
    western = next((m for m in tied if "cp1252" in m.could_be_from_charset), None)
    if western is not None:
        return DecodedText(str(western), "cp1252, detected (not valid UTF-8)")
    return DecodedText(str(best), f"{best.encoding}, detected (not valid UTF-8)")


_LINE_END = re.compile(r"\r\n?|\n")


def read_markdown(path: Path) -> Document:
    decoded = decode_text(path.read_bytes())
    text = decoded.text
    title = next(
        # Lines end at \n or \r only: splitlines() also breaks at U+2028 and U+0085, which
        # would make text after one look like a heading.
        (line.lstrip("# ").strip() for line in _LINE_END.split(text) if line.startswith("# ")),
        "",
    )
    return Document(decoded.text, markdown=True, title=title, decoded_as=decoded.decoded_as)


def read_plain_text(path: Path) -> Document:
    decoded = decode_text(path.read_bytes())
    return Document(decoded.text, markdown=False, decoded_as=decoded.decoded_as)


_PDF_LOAD_ERRORS = {
    pdfium_c.FPDF_ERR_PASSWORD: "encrypted PDF: a password is needed",
    pdfium_c.FPDF_ERR_SECURITY: "encrypted PDF: its security scheme is not supported",
    pdfium_c.FPDF_ERR_FORMAT: "not a readable PDF: damaged, or not a PDF at all",
    # pypdfium2 reports a document without pages as a load failure with PDFium's "success".
    pdfium_c.FPDF_ERR_SUCCESS: "not a readable PDF: it has no pages",
}


def read_pdf(path: Path, max_pages: int = 2000) -> Document:
    """The text layer page by page; pages joined by a blank line, each page's start kept."""
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        raise ReadError(_PDF_LOAD_ERRORS.get(exc.err_code, f"not a readable PDF: {exc}")) from exc
    try:
        if len(pdf) > max_pages:
            raise ReadError(
                f"{len(pdf)} pages is over the limit of {max_pages} (ingest.max_pdf_pages)"
            )
        pages = [_pdf_page_text(pdf, index) for index in range(len(pdf))]
        title = _pdf_title(pdf)
    except pdfium.PdfiumError as exc:
        raise ReadError(f"not a readable PDF: {exc}") from exc
    finally:
        pdf.close()
    if not any(pages):
        raise ReadError("no text layer (scanned PDF?); OCR is not supported")
    starts = [0]
    for text in pages[:-1]:
        starts.append(starts[-1] + len(text) + len("\n\n"))
    return Document("\n\n".join(pages), markdown=False, title=title, page_starts=tuple(starts))


def _pdf_title(pdf: pdfium.PdfDocument) -> str:
    try:
        title: str = pdf.get_metadata_value("Title")
    except UnicodeDecodeError:
        # pypdfium2 decodes metadata strictly, and a title holding a lone UTF-16 surrogate
        # fails; the pages are still readable, so the file keeps them and goes untitled.
        return ""
    return title.strip()


def _pdf_page_text(pdf: pdfium.PdfDocument, index: int) -> str:
    page = pdf[index]
    textpage = page.get_textpage()
    try:
        # Bounded rather than range extraction: it decodes characters beyond UCS-2.
        text: str = textpage.get_text_bounded()
    finally:
        textpage.close()
        page.close()
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


# A member packed more tightly than this is a zip bomb's signature: Word's own parts stay
# under 40 times (styles.xml 29, a 2 MB body of repetitive paragraphs 37).
_MAX_ZIP_RATIO = 100
# Small members (a blank bitmap, padding XML) legitimately compress far beyond the ratio and
# cannot hurt; only members this large are held to it.
_RATIO_CHECKED_FROM = 1_000_000
# What a damaged package raises on its way through zipfile, lxml and python-docx, and what
# that says about the file. python-docx picks its element classes by tag name, so a part
# whose root element is renamed comes back as a plain lxml element and fails with
# AttributeError (49 of 3,000 packages with one XML part mutated, fuzzed 2026-12-06).
_DOCX_DAMAGE: tuple[tuple[type[Exception], str], ...] = (
    (zipfile.BadZipFile, "damaged zip archive"),
    (zlib.error, "corrupted compressed data in the zip archive"),
    (EOFError, "compressed data cut short in the zip archive"),
    (NotImplementedError, "zip archive uses a feature Python's zipfile lacks"),
    (XMLSyntaxError, "malformed XML"),
    (InvalidXmlError, "XML that breaks the DOCX schema"),
    (PackageNotFoundError, "not a Word package"),
    (KeyError, "a part is missing"),
    (ValueError, "an invalid value"),
    (AttributeError, "XML that is not the structure Word writes"),
)
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def read_docx(path: Path, max_unzipped_bytes: int = 200_000_000) -> Document:
    """Paragraphs and tables in body order; Title and Heading N styles become Markdown
    headings, table rows become lines of cells joined by " | "."""
    _check_docx_archive(path, max_unzipped_bytes)
    try:
        document = docx.Document(str(path))
        blocks, first_heading = _docx_blocks(document)
        title = (document.core_properties.title or "").strip() or first_heading
    except tuple(damage for damage, _ in _DOCX_DAMAGE) as exc:
        raise ReadError(_docx_damage_reason(exc)) from exc
    return Document("\n\n".join(b for b in blocks if b), markdown=True, title=title)


def _docx_damage_reason(exc: Exception) -> str:
    what = next(what for damage, what in _DOCX_DAMAGE if isinstance(exc, damage))
    # KeyError's str() quotes its message; the message is what the user reads.
    detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"not a readable DOCX: {what}: {detail}"


def _docx_blocks(document: DocxDocument) -> tuple[list[str], str]:
    """The body's blocks in order, and the first level-1 heading's text."""
    blocks = []
    first_heading = ""
    # Resolving a paragraph's style searches the styles part every time: 40 % of reading a
    # DOCX. A document has a few styles, so each id is resolved once.
    levels: dict[str | None, int] = {}
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.append(_docx_table_text(item))
            continue
        style_id = item._p.style
        if style_id not in levels:
            levels[style_id] = _docx_heading_level(item)
        level = levels[style_id]
        if not level:
            blocks.append(item.text.strip())
            continue
        heading = " ".join(item.text.split())
        if heading:
            blocks.append(f"{'#' * level} {heading}")
            if level == 1 and not first_heading:
                first_heading = heading
    return blocks, first_heading


def _check_docx_archive(path: Path, max_unzipped_bytes: int) -> None:
    """Checks the archive before anything is unpacked: a zip, not encrypted, and no bomb by
    the sizes it declares. They bound what is read: zipfile stops every member at its
    declared size."""
    with path.open("rb") as file:
        if file.read(len(_OLE2_MAGIC)) == _OLE2_MAGIC:
            raise ReadError(
                "not a readable DOCX: an OLE2 file, not a zip: a password-protected DOCX or "
                "a Word 97-2003 .doc; save it from Word as .docx without a password"
            )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, NotImplementedError) as exc:
        raise ReadError(_docx_damage_reason(exc)) from exc
    encrypted = next((member for member in members if member.flag_bits & 0x1), None)
    if encrypted is not None:
        raise ReadError(f"not a readable DOCX: {encrypted.filename} is encrypted in the zip")
    total = sum(member.file_size for member in members)
    if total > max_unzipped_bytes:
        raise ReadError(
            f"unzips to {total} bytes, over the limit of {max_unzipped_bytes} "
            "(ingest.max_unzipped_bytes); it looks like a decompression bomb"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= _RATIO_CHECKED_FROM and ratio > _MAX_ZIP_RATIO:
            raise ReadError(
                f"{member.filename} expands {ratio:.0f} times (over {_MAX_ZIP_RATIO}); "
                "it looks like a decompression bomb"
            )


def _docx_heading_level(paragraph: Paragraph) -> int:
    name = (paragraph.style.name if paragraph.style is not None else None) or ""
    if name == "Title":
        return 1
    number = name.removeprefix("Heading ")
    return min(int(number), 6) if name.startswith("Heading ") and number.isdigit() else 0


def _docx_table_text(table: Table) -> str:
    """Each row's cells once, a vertically merged cell's text in every row it spans.

    Not python-docx's `row.cells`: it lists a cell once per grid column it spans (a crafted
    gridSpan of 10**20 filled memory until the kernel killed the process) and finds a merged
    cell's text by recursing once per row above it (1,500 merged rows: RecursionError)."""
    rows = []
    above: dict[int, str] = {}  # the previous row's cell texts by grid column
    for row in table.rows:
        cells = []
        texts: dict[int, str] = {}
        column = row.grid_cols_before
        for tc in row._tr.tc_lst:
            if tc.vMerge == "continue":
                # A continuation with nothing above it is damage Word repairs; read it empty.
                text = above.get(column, "")
            else:
                text = " ".join(_Cell(tc, table).text.split())
            cells.append(text)
            texts[column] = text
            column += tc.grid_span
        if any(cells):
            rows.append(" | ".join(cells))
        above = texts
    return "\n".join(rows)


# Non-text and page chrome: their words would pollute every chunk of the page.
_HTML_DROPPED = ["script", "style", "noscript", "template", "svg", "iframe", "nav", "aside", "form"]
_HTML_SITE_CHROME = ["header", "footer"]
_HTML_INLINE = {
    "a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn", "em", "font", "i",
    "ins", "kbd", "label", "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup",
    "time", "u", "var", "wbr",
}  # fmt: skip
_HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_HTML_BLOCKS = "p, div, ul, ol, li, dl, table, pre, blockquote, h1, h2, h3, h4, h5, h6"
_META_CHARSET = re.compile(rb"""<meta[^>]*charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)


# Lexbor's parse time grows with the square of the nesting depth (here: 20,000 nested lists
# 1.4 s, 100,000 about 110 s), so a crafted page of a few MB would hold the ingest lock for
# hours. Real pages nest a few dozen levels.
MAX_HTML_NESTING = 20_000
# Tags that never nest by staying open: void elements, and those HTML closes by itself when
# the next one starts (an unclosed <p>, <li> or <td> is a sibling, not a child).
_HTML_NOT_NESTING = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
        "p",
        "li",
        "dt",
        "dd",
        "tr",
        "td",
        "th",
        "option",
        "optgroup",
        "thead",
        "tbody",
        "tfoot",
        "colgroup",
        "rp",
        "rt",
    ]
)
_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^>]*?(/?)>")


def html_nesting_estimate(text: str) -> int:
    """How deep a page's elements nest at most, from its tags alone (no parse): opening tags
    less closing ones, for tags that nest."""
    depth = deepest = 0
    for match in _HTML_TAG.finditer(text):
        closing, name, self_closing = match.groups()
        if self_closing or name.lower() in _HTML_NOT_NESTING:
            continue
        if closing:
            depth = max(depth - 1, 0)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def read_html(path: Path) -> Document:
    """The page's main content as Markdown: headings kept, list items as "- " lines,
    scripts, styles, navigation and other page chrome dropped."""
    data = path.read_bytes()
    decoded = decode_text(data, _declared_charset(data))
    depth = html_nesting_estimate(decoded.text)
    if depth > MAX_HTML_NESTING:
        raise ReadError(
            f"HTML nested about {depth} elements deep (the most read is {MAX_HTML_NESTING}): "
            "not a page a person wrote"
        )
    tree = LexborHTMLParser(decoded.text)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node is not None else ""
    root = _html_main_content(tree)
    if root is None:
        raise ReadError("no text in the HTML page")
    # A <header> or <footer> inside <main> or <article> is the article's own (its title, its
    # date), not the site's chrome, which is outside them.
    root.strip_tags(_HTML_DROPPED + (_HTML_SITE_CHROME if root.tag == "body" else []))
    blocks = [block for block in _html_blocks(root) if block]
    if not blocks:
        raise ReadError("no text in the HTML page")
    if not title:
        title = next((block[2:] for block in blocks if block.startswith("# ")), "")
    return Document("\n\n".join(blocks), markdown=True, title=title, decoded_as=decoded.decoded_as)


def _declared_charset(data: bytes) -> str | None:
    match = _META_CHARSET.search(data[:4096])
    if match is None:
        return None
    try:
        name = codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return None
    # Browsers read pages labelled Latin-1 or ASCII as Windows-1252, and so do their authors.
    return "cp1252" if name in {"latin-1", "iso8859-1", "ascii"} else name


def _html_main_content(tree: LexborHTMLParser) -> LexborNode | None:
    main = tree.css_first("main, [role=main]")
    if main is not None:
        return main
    # Several <article>s are a listing (a blog's front page), not one main text.
    articles = tree.css("article")
    return articles[0] if len(articles) == 1 else tree.body


def _html_blocks(node: LexborNode) -> list[str]:
    """The text blocks under `node` in reading order, whitespace collapsed inside each:
    headings as Markdown, list items with "- ", rows of a plain table as cells joined by
    " | ", preformatted text fenced as it is. Empty blocks come out as "".

    The walk keeps its own stack: a page of 3,000 nested <div>s (33 KB) recursed past
    Python's limit."""
    blocks = _ListItemBlocks()
    run: list[str] = []  # inline text waiting for the next block boundary
    # One entry per element being walked: its children still to visit, and whether it is a
    # list item (whose end closes the item).
    stack = [(node.iter(include_text=True), False)]
    while stack:
        children, is_item = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            blocks.add(" ".join("".join(run).split()))
            run.clear()
            if is_item:
                blocks.close_item()
            continue
        tag = child.tag or ""
        if child.is_text_node or tag in _HTML_INLINE:
            run.append(child.text())
            continue
        if tag == "br":
            run.append(" ")
            continue
        if child.is_comment_node:
            continue
        blocks.add(" ".join("".join(run).split()))
        run.clear()
        if tag in _HTML_HEADINGS:
            heading = " ".join(child.text().split())
            blocks.add(f"{'#' * int(tag[1])} {heading}" if heading else "")
        elif tag == "pre":
            code = child.text().strip("\n")
            blocks.add(f"```\n{code}\n```" if code.strip() else "")
        elif tag == "tr" and child.css_first(_HTML_BLOCKS) is None:
            cells = [" ".join(cell.text().split()) for cell in child.iter()]
            blocks.add(" | ".join(cells) if any(cells) else "")
        else:
            if tag == "li":
                blocks.open_item()
            stack.append((child.iter(include_text=True), tag == "li"))
    return blocks.blocks


class _ListItemBlocks:
    """Blocks in walk order, with list items marked: an item's first non-empty block starts
    with "- " (one per item, so an item that opens with a nested item reads "- - "), and
    empty blocks inside an item are dropped."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self._written = 0  # non-empty blocks so far
        # For each open item, how many non-empty blocks had been written when it opened.
        self._items: list[int] = []
        self._waiting = 0  # open items with no non-empty block yet: the innermost ones

    def open_item(self) -> None:
        self._items.append(self._written)
        self._waiting += 1

    def close_item(self) -> None:
        if self._items.pop() == self._written:
            self._waiting -= 1

    def add(self, block: str) -> None:
        if not block:
            if not self._items:
                self.blocks.append("")
            return
        self.blocks.append("- " * self._waiting + block)
        self._waiting = 0
        self._written += 1


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what one file may cost to read (ingest settings carry the values)."""

    max_pdf_pages: int = 2000
    max_unzipped_bytes: int = 200_000_000


# One line per format: the extension and how to read it within the limits.
READERS: dict[str, Callable[[Path, ReadLimits], Document]] = {
    ".md": lambda path, _: read_markdown(path),
    ".markdown": lambda path, _: read_markdown(path),
    ".txt": lambda path, _: read_plain_text(path),
    ".pdf": lambda path, limits: read_pdf(path, limits.max_pdf_pages),
    ".docx": lambda path, limits: read_docx(path, limits.max_unzipped_bytes),
    ".html": lambda path, _: read_html(path),
    ".htm": lambda path, _: read_html(path),
}


def read_document(path: Path, limits: ReadLimits = ReadLimits()) -> Document:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ReadError(f"no reader for {path.suffix or 'files without an extension'}")
    try:
        return reader(path, limits)
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from exc
