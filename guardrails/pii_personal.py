"""Dates of birth and UK National Insurance numbers.

A date is personal only as a birth date: one after a label ("DOB", "date of birth") or a birth
word ("born", "birthday") is DATE_OF_BIRTH; other dates (a meeting, an invoice) are not PII.
A National Insurance number has a shape distinct enough to stand alone (`QQ 12 34 56 C`);
Presidio's own recognizer scores it 0.5 and skips the `ZZ` prefix used on test records.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult

_MONTHS = (
    "Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    "|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?"
)
_DATE = (
    r"(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}"
    r"|\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s(?:of\s)?(?:{_MONTHS})\.?,?\s\d{{4}}"
    rf"|(?:{_MONTHS})\.?\s\d{{1,2}}(?:st|nd|rd|th)?,?\s\d{{4}})"
)
# The label or birth word, then up to 25 characters of anything that is not a sentence end
# ("born in Leeds on", "DOB:"), then the date.
_DOB = re.compile(
    r"(?i:\b(?:date\sof\sbirth|birth\s?date|birthday|d\.?o\.?b\.?|born|geboren|né(?:e)?\sle"
    r"|fødselsdato|födelsedatum|syntymäaika|geboortedatum|date\sde\snaissance))"
    rf"[^.!?\n]{{0,25}}?\b(?P<date>{_DATE})\b"
)
# A full date right after a name, set off by a comma, a bracket or a dash, is how forms and
# lists write a birth date with no label: `Ann Lee (12/03/1961)`, `Ann Lee, 1961-03-12,`,
# `Ann Lee - 12 March 1961 -`. Only four-digit years: `Ann Lee, 12/03` is not a birth date.
_DATE_BESIDE_NAME = re.compile(
    r"(?:\s?[(\[]|,\s|\s[-–—]\s)"
    rf"(?P<date>{_DATE})(?=[)\],.;:\s]|$)"
)
_LATEST_BIRTH_YEAR = datetime.date.today().year - 10
_NINO = re.compile(r"\b[A-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b")
_NINO_STRICT = re.compile(
    r"(?!BG|GB|NK|KN|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]"
)
_NINO_LABEL = re.compile(r"(?i:national\sinsurance|\bNI\b|\bNINO\b|\bNIN\b)")
# A date after a birth label is the birth date; spaCy may call it a DATE at 0.85.
SCORE = 0.9
# A valid-prefix NI number with no label beside it.
SCORE_NINO_SHAPE = 0.65


class PersonalDetailsRecognizer(EntityRecognizer):  # type: ignore[misc]
    """DATE_OF_BIRTH after a birth label, UK_NINO by shape (and label)."""

    def __init__(self, entities: tuple[str, ...]) -> None:
        super().__init__(
            supported_entities=[e for e in ("DATE_OF_BIRTH", "UK_NINO") if e in entities],
            name="personal_details",
            supported_language="en",
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        found = []
        if "DATE_OF_BIRTH" in entities:
            for m in _DOB.finditer(text):
                found.append(RecognizerResult("DATE_OF_BIRTH", *m.span("date"), SCORE))
        if "UK_NINO" in entities:
            for m in _NINO.finditer(text):
                labelled = _NINO_LABEL.search(text[max(0, m.start() - 40) : m.start()])
                if labelled:
                    found.append(RecognizerResult("UK_NINO", m.start(), m.end(), SCORE))
                elif _NINO_STRICT.fullmatch(m.group()):
                    found.append(RecognizerResult("UK_NINO", m.start(), m.end(), SCORE_NINO_SHAPE))
        return found


def birth_dates_beside_names(text: str, results: list[Any]) -> list[Any]:
    """`results` with DATE_OF_BIRTH added for each full date right after a PERSON span, and
    the other spans trimmed off that date (spaCy runs a name on into `- 09`; a house-number
    pattern may start at `06/1961, boulevard …`)."""
    dates = []
    for person in results:
        if person.entity_type != "PERSON":
            continue
        m = _DATE_BESIDE_NAME.match(text, person.end)
        year = re.search(r"\d{4}", m.group("date")) if m else None
        # A birth year is at least ten years back: `Ann Lee, 12 May 2025` signs a letter.
        if m and year and 1900 < int(year.group()) <= _LATEST_BIRTH_YEAR:
            dates.append(m.span("date"))
    if not dates:
        return results
    kept = []
    for r in results:
        for start, end in dates:
            if r.start < end and start < r.end and r.entity_type != "DATE_OF_BIRTH":
                if r.start >= start:
                    r.start = end + len(text[end : r.end]) - len(text[end : r.end].lstrip(" ,;-"))
                else:
                    r.end = len(text[:start].rstrip(" ,;-([–—"))
        if r.end - r.start > 1:
            kept.append(r)
    covered = {(r.start, r.end) for r in kept if r.entity_type == "DATE_OF_BIRTH"}
    kept += [
        RecognizerResult("DATE_OF_BIRTH", start, end, SCORE)
        for start, end in dates
        if (start, end) not in covered
    ]
    return kept
