"""Structure-aware chunking: sections by heading, then paragraphs, bounded by the embedder's
token limit with overlap. Every chunk keeps its section path and character offsets."""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# A line with its end (\n, \r\n or \r), or the last line without one.
_LINES = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+\Z")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

CountTokens = Callable[[str], int]
# Tokens in text[start:end] of the one text being chunked.
CountSpan = Callable[[int, int], int]


class TokenOffsets:
    """Token counts of any span of one text from a single tokenizer pass over the whole text.

    Packing asks for the count of many overlapping spans; tokenizing each again cost more than
    a third of ingest's non-embedding time (make bench-ingest). Every span the chunker asks
    about starts and ends at whitespace, where WordPiece and BPE pre-tokenizers split anyway,
    so counting the tokens that start inside the span gives the span's own count.
    """

    def __init__(self, text: str, tokenizer: Any) -> None:
        encoded = tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        self._starts = [start for start, _ in encoded["offset_mapping"]]

    def count(self, start: int, end: int) -> int:
        return bisect.bisect_left(self._starts, end) - bisect.bisect_left(self._starts, start)


@dataclass(frozen=True)
class TextPiece:
    text: str
    section: str
    start: int
    end: int
    # The piece's length in the chunking tokenizer's tokens: the embedder sorts its batches
    # by it without tokenizing the texts again.
    tokens: int = 0

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Section:
    path: str
    start: int
    end: int


def markdown_sections(text: str) -> list[Section]:
    """Spans of text under each heading, named by the heading path (`Leave › Sick leave`)."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    current_path, current_start = "", 0
    offset = 0
    in_fence = False
    # Lines end at \n or \r only (offsets stay exact): splitlines() also breaks at U+2028
    # and U+0085, so text after one that starts with "#" would become a heading.
    for line in _LINES.findall(text):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\n"))
        if match:
            if offset > current_start:
                sections.append(Section(current_path, current_start, offset))
            level = len(match.group(1))
            stack = [(lvl, title) for lvl, title in stack if lvl < level] + [
                (level, match.group(2))
            ]
            current_path = " › ".join(title for _, title in stack)
            current_start = offset
        offset += len(line)
    if offset > current_start:
        sections.append(Section(current_path, current_start, offset))
    return sections


def _paragraphs(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    cursor = start
    for match in _PARAGRAPH_BREAK.finditer(text, start, end):
        yield cursor, match.start()
        cursor = match.end()
    yield cursor, end


def _split_long(
    text: str, start: int, end: int, limit: int, count: CountSpan
) -> Iterator[tuple[int, int]]:
    """A paragraph over the limit: sentences packed to the limit; a sentence still over it is
    cut on word boundaries."""
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        spans.append((cursor, match.start()))
        cursor = match.end()
    spans.append((cursor, end))
    piece_start, piece_end = spans[0]
    for s, e in spans[1:]:
        if count(piece_start, e) <= limit:
            piece_end = e
        else:
            yield from _cut_words(text, piece_start, piece_end, limit, count)
            piece_start, piece_end = s, e
    yield from _cut_words(text, piece_start, piece_end, limit, count)


def _cut_words(
    text: str, start: int, end: int, limit: int, count: CountSpan
) -> Iterator[tuple[int, int]]:
    if count(start, end) <= limit:
        yield start, end
        return
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text[start:end])]
    piece_start = 0
    for i in range(1, len(words) + 1):
        if i == len(words) or count(start + words[piece_start][0], start + words[i][1]) > limit:
            yield start + words[piece_start][0], start + words[i - 1][1]
            piece_start = i
            if i == len(words):
                return


def chunk_document(
    text: str, tokenizer: Any, max_tokens: int, overlap_tokens: int, markdown: bool
) -> list[TextPiece]:
    """Chunks of `text` measured in `tokenizer`'s tokens (a Hugging Face tokenizer; a fast one
    is tokenized once, a slow one span by span)."""
    if getattr(tokenizer, "is_fast", False):
        count = TokenOffsets(text, tokenizer).count
    else:

        def count(start: int, end: int) -> int:
            return len(tokenizer.encode(text[start:end], add_special_tokens=False, verbose=False))

    return chunk_spans(text, count, max_tokens, overlap_tokens, markdown)


def chunk_text(
    text: str,
    count_tokens: CountTokens,
    max_tokens: int,
    overlap_tokens: int,
    markdown: bool,
) -> list[TextPiece]:
    """Chunks of `text` measured by `count_tokens` on each span's text."""
    return chunk_spans(
        text, lambda s, e: count_tokens(text[s:e]), max_tokens, overlap_tokens, markdown
    )


def chunk_spans(
    text: str,
    count: CountSpan,
    max_tokens: int,
    overlap_tokens: int,
    markdown: bool,
) -> list[TextPiece]:
    sections = markdown_sections(text) if markdown else [Section("", 0, len(text))]
    pieces: list[TextPiece] = []
    for section in sections:
        units: list[tuple[int, int]] = []
        for s, e in _paragraphs(text, section.start, section.end):
            if not text[s:e].strip():
                continue
            if count(s, e) > max_tokens:
                units.extend(_split_long(text, s, e, max_tokens, count))
            else:
                units.append((s, e))
        pieces += _pack(text, units, section.path, count, max_tokens, overlap_tokens)
    return pieces


def _pack(
    text: str,
    units: list[tuple[int, int]],
    section: str,
    count: CountSpan,
    max_tokens: int,
    overlap_tokens: int,
) -> list[TextPiece]:
    """Greedy packing of paragraphs into chunks; a new chunk starts with the previous chunk's
    last paragraph when that fits in the overlap budget, so a fact split across the boundary
    is still whole in one chunk."""
    pieces: list[TextPiece] = []
    current: list[tuple[int, int]] = []
    for unit in units:
        candidate = [*current, unit]
        if current and count(candidate[0][0], unit[1]) > max_tokens:
            pieces.append(_piece(text, current, section, count))
            carry = current[-1]
            current = [carry, unit] if count(*carry) <= overlap_tokens else [unit]
            if count(current[0][0], unit[1]) > max_tokens:
                current = [unit]
        else:
            current = candidate
    if current:
        pieces.append(_piece(text, current, section, count))
    return pieces


def _piece(text: str, units: list[tuple[int, int]], section: str, count: CountSpan) -> TextPiece:
    start, end = units[0][0], units[-1][1]
    return TextPiece(text[start:end].strip(), section, start, end, count(start, end))
