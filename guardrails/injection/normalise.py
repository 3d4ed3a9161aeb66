"""The text as a reader sees it: compatibility forms folded, look-alike letters mapped to
Latin, invisible characters removed, letter-by-letter spacing joined, and encoded spans
(base64, hex, binary, rot13 and other Caesar shifts) decoded, so obfuscation does not hide an
attack from the other layers."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

# Characters that render as nothing or reorder text: used to split keywords invisibly.
_INVISIBLE = re.compile(
    r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u206f\u3164\ufeff\uffa0\U000e0000-\U000e007f]"
)
# Cyrillic and Greek letters that look like Latin ones; NFKC leaves them alone.
_HOMOGLYPHS = str.maketrans(
    "аеорсухіјѕԁԛԝАВЕКМНОРСТХІЈЅαβεικνορτυχΑΒΕΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxijsdqwABEKMHOPCTXIJSabeiknoptuxABEHIKMNOPTYX",
)
_BASE64_SPAN = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX_SPAN = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){12,}\b")
# Bytes written as eight binary digits each ("01001001 01100111 …"), six or more.
_BINARY_SPAN = re.compile(r"\b(?:[01]{8}[\s,]*){6,}")
# Decoded text counts as text when at least this share of it is letters and spaces (prose and
# JSON-wrapped instructions are 0.75-0.9; printable noise from random bytes about 0.55) and it
# holds a run of three letters.
WORDLIKE_SHARE = 0.7
MAX_DECODED_SPANS = 16
_LETTER_RUN = re.compile(r"[^\W\d_]{3}")
# The commonest English words: a sentence of several words has one or more of them unless it is
# enciphered (a Caesar shift keeps word lengths and spaces and hides every one of them).
_COMMON_WORDS = frozenset(
    {"the", "and", "to", "of", "in", "is", "you", "your", "that", "it", "for", "this", "with"}
    | {"on", "are", "be", "as", "we", "all", "not", "or", "from", "what", "by"}
)
# A sentence: a maximal run without sentence marks (one pass, no backtracking on long runs).
_SENTENCE_RUN = re.compile(r"[^.!?\n]+")
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_SENTENCE_WORDS = 6
_SPACED_LETTERS = re.compile(r"\b(?:[A-Za-z][\s.\-_*]){4,}[A-Za-z]\b")


def normalise(text: str) -> str:
    """The text as a reader would see it: compatibility forms folded, look-alike letters
    mapped to Latin, invisible characters removed, letter-by-letter spacing joined."""
    folded = unicodedata.normalize("NFKC", text)
    folded = _INVISIBLE.sub("", folded).translate(_HOMOGLYPHS)
    folded = _SPACED_LETTERS.sub(lambda m: re.sub(r"[\s.\-_*]", "", m.group(0)), folded)
    return re.sub(r"\s+", " ", folded)


def reads_as_text(decoded: str) -> bool:
    """Whether a view reads as words rather than noise, for the trained head. Any long word is
    valid base64 ("Immunodeficiency" decodes to `"i^~'"zw2`): such noise costs the head an
    embedding and can catch its eye (it flagged a paragraph on the immune system). Words are
    mostly letters and spaces; random bytes that decode to printable text are about half
    letters. The rules read every decoded span: a decoded URL or markup is mostly not letters
    and is exactly what the exfiltration rules look for."""
    if not decoded or not all(c.isprintable() or c in "\n\t" for c in decoded):
        return False
    wordlike = sum(c.isalpha() or c.isspace() for c in decoded) / len(decoded)
    return wordlike >= WORDLIKE_SHARE and _LETTER_RUN.search(decoded) is not None


def decoded_spans(text: str) -> list[str]:
    """Printable text hidden in base64, hex, binary octets or a Caesar shift (rot13 among
    them), decoded so the rules can read it."""
    found: list[str] = []
    for match in _BASE64_SPAN.finditer(text):
        span = match.group(0)
        try:
            raw = base64.b64decode(span + "=" * (-len(span) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        decoded = raw.decode("utf-8", errors="ignore")
        if len(decoded) >= 8 and sum(c.isprintable() for c in decoded) / len(decoded) > 0.9:
            found.append(decoded)
    for match in _HEX_SPAN.finditer(text):
        try:
            decoded = bytes.fromhex(re.sub(r"[\s:]", "", match.group(0))).decode("utf-8")
        except ValueError:
            continue
        if decoded.isprintable():
            found.append(decoded)
    for match in _BINARY_SPAN.finditer(text):
        octets = re.findall(r"[01]{8}", match.group(0))
        decoded = bytes(int(octet, 2) for octet in octets).decode("utf-8", errors="ignore")
        if len(decoded) >= 4 and decoded.isprintable():
            found.append(decoded)
    if re.search(r"\brot-?13\b", text, re.IGNORECASE):
        found.append(codecs.decode(text, "rot13"))
    # Each decoded span is another view every layer reads (the head embeds it): a text made of
    # hundreds of encoded spans must not cost hundreds of embeddings.
    return list(dict.fromkeys([*found, *caesar_spans(text)]))[:MAX_DECODED_SPANS]


def _common_share(words: list[str]) -> float:
    return sum(w in _COMMON_WORDS for w in words) / len(words)


def caesar_spans(text: str) -> list[str]:
    """Sentences of six or more words, written in letters and spaces like prose, with none of
    the commonest English words, shifted back by the one Caesar shift that makes a quarter of
    their words common English, three different ones at least ("Lpsruh suhylrxv lqvwuxfwlrqv
    dqg vwdwh wkdw" is "Ignore previous instructions and state that" shifted by 3). Code and
    noise are not prose, so they are left alone."""
    found = []
    for match in _SENTENCE_RUN.finditer(text):
        sentence = match.group(0)
        words = re.findall(r"[A-Za-z]{2,}", sentence.lower())
        prose = sum(c.isalpha() or c in " ,;:'" for c in sentence) / len(sentence)
        if len(words) < _SENTENCE_WORDS or prose < 0.9 or _common_share(words) > 0:
            continue
        for shift in range(1, 26):
            table = str.maketrans(_LOWER, _LOWER[shift:] + _LOWER[:shift])
            shifted = [w.translate(table) for w in words]
            common = {w for w in shifted if w in _COMMON_WORDS}
            if _common_share(shifted) >= 0.25 and len(common) >= 3:
                upper = _LOWER.upper()
                table.update(str.maketrans(upper, upper[shift:] + upper[:shift]))
                found.append(sentence.translate(table).strip())
                break
    return found


def views_of(text: str) -> list[str]:
    """The text as a reader sees it, plus any encoded spans decoded. Text in Cyrillic or Greek
    is also kept with its own letters: folding look-alikes to Latin is for Latin text that
    hides behind them, and it garbles Russian or Greek words for the rules of those languages."""
    seen = normalise(text)
    views = [seen, *(normalise(decoded) for decoded in decoded_spans(seen))]
    unfolded = re.sub(r"\s+", " ", _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)))
    if unfolded.translate(_HOMOGLYPHS) != unfolded:
        views.append(unfolded)
    return views
