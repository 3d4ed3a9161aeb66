"""Reading one file into text. Each format is one function registered by extension."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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

    def page_at(self, offset: int) -> int | None:
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)


def decode_text(data: bytes) -> str:
    """Bytes to text with the encoding detected, never guessed silently: undetectable or
    binary content is an error naming the reason."""
    if not data:
        raise ReadError("empty file")
    if b"\x00" in data[:8192]:
        raise ReadError("binary content (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
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
    return str(western or best)


def read_markdown(path: Path) -> Document:
    text = decode_text(path.read_bytes())
    title = next(
        (line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), ""
    )
    return Document(text, markdown=True, title=title)


def read_plain_text(path: Path) -> Document:
    return Document(decode_text(path.read_bytes()), markdown=False)


READERS: dict[str, Callable[[Path], Document]] = {
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".txt": read_plain_text,
}


def read_document(path: Path) -> Document:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ReadError(f"no reader for {path.suffix or 'files without an extension'}")
    try:
        return reader(path)
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from exc
