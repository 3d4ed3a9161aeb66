"""Phone numbers the way people write them, in any of the regions below, with or without a
word like "call" in front: `(591) 341-7776 x9150`, `001-206-269-0743`, `0151 496 0123`,
`+44 20 7946 0958`, `+46 (0)914 177 76`, `06 12 34 56 78`, `02 4177 7631`.

Presidio's PhoneRecognizer scores a number without a context word at 0.4 (under the guard's
0.5) and runs `phonenumbers`' matcher over the whole text once per region: 28 ms for 21 regions
on 1,000 characters. Here one regex finds number-shaped candidates and `phonenumbers.parse`
judges each (tens of microseconds); the score comes from validity and shape.
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from presidio_analyzer import EntityRecognizer, RecognizerResult

# Tried in order for numbers without a country code; a `+`/`00` number needs none of them.
REGIONS = (
    "US", "GB", "IE", "CA", "AU", "NZ", "FR", "DE", "AT", "CH", "NL", "BE", "LU", "SE", "DK",
    "NO", "FI", "IS", "CZ", "SK", "PL", "HU", "IT", "ES", "PT", "RO", "HR", "SI", "GR", "IN",
)  # fmt: skip

# A `+`, `00` or `(` may open it; digit groups joined by one space, dash, dot or slash, some
# in parentheses (`(0)`, `(0161)`); an extension after `x`/`ext`. Nothing letter- or
# digit-like may touch either end, so `INV-2024-0087` and `v3.8.18` give no candidate.
_CANDIDATE = re.compile(
    r"(?<![\w+/.\-])"
    r"(?P<number>(?:\+|\(\+?)?\d[\d()]*(?:(?:[ .\-/]|\)\s?|\s?\()[\d()]+){0,7})"
    r"(?:\s?(?:x|ext\.?|extension)\s?(?P<ext>\d{1,6}))?"
    r"(?![\w+]|[.\-/]\d)"
)
# Shapes that are something else: dates, IPv4 addresses, US SSNs, cards (4-4-4-4, Amex
# 4-6-5).
_NOT_A_PHONE = re.compile(
    r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
    r"|\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{3}-\d{2}-\d{4}"
    r"|\d{4} \d{4} \d{4}(?: \d{1,4})?|\d{4}[ -]\d{6}[ -]\d{5}"
    r"|\d{2}-\d{7}|\d{1,2}-\d{1,2}(?: \d{1,2}-\d{1,2})+"  # US EIN/TIN; match scores 15-12 17-14
)
# A number right after one of these words is that identifier, not a phone: "routing number
# 021000021", "Tax ID 94-2841935", "license ID 567-890-123" (pii_dev.jsonl's false positives).
_OTHER_IDENTIFIER = re.compile(
    r"(?i:routing|sort\scode|account|acct|iban|tax|\btin\b|\bein\b|ssn|social\ssecurity"
    r"|licen[cs]e|passport|aadhaar|invoice|order|ticket|case|policy|member|customer\sid)"
    r"\W*(?:\w+\W+)?$"
)
_CONTEXT = re.compile(
    r"(?i:phone|tel\b|tel\.|telephone|mobile|cell|call|ring|text|sms|whats\s?app|fax|contact"
    r"|reach|dial|landline|hotline|\bm:|\bt:|\bp:)"
)
# Valid for its region and written like a phone number (a `+`/`00`/trunk `0` prefix,
# parentheses or separated groups): above spaCy's 0.85 so a number is never half a "DATE".
SCORE_VALID = 0.9
# Possible for its region (right length) and phone-shaped, or valid but a bare digit run with
# a phone word in the 40 characters before it.
SCORE_POSSIBLE = 0.6
# A bare run of digits with no phone word: an order or ticket number as often as a phone.
SCORE_BARE = 0.3


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _parses(number: str) -> tuple[bool, bool]:
    """(valid somewhere, possible somewhere) over the regions, or by its own country code."""
    international = number.startswith(("+", "(+"))
    possible = False
    for region in (None,) if international else REGIONS:
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return True, True
        # A local-only length (7 digits in North America) is no phone number once a country
        # code is written in front: `+1-555-0100` cannot be dialled.
        reason = phonenumbers.is_possible_number_with_reason(parsed)
        possible = (
            possible
            or reason == phonenumbers.ValidationResult.IS_POSSIBLE
            or (
                not international and reason == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY
            )
        )
    return False, possible


def _country_code_known(number: str) -> bool:
    if not number.startswith(("+", "(+")):
        return False
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.region_code_for_country_code(parsed.country_code or 0) != "ZZ"


def phone_score(number: str, before: str) -> float:
    digits = _digits(number)
    if not 7 <= digits <= 15 or _NOT_A_PHONE.fullmatch(number.replace("(", "").replace(")", "")):
        return 0.0
    if number.count("(") != number.count(")"):
        return 0.0
    valid, possible = _parses(number)
    plus = number.startswith(("+", "(+", "00"))
    trunk = number.startswith(("0", "(0"))
    grouped = bool(re.search(r"[ .\-/()]", number.strip("+(")))
    context = bool(_CONTEXT.search(before))
    if not plus and _OTHER_IDENTIFIER.search(before[-25:]):
        return 0.0
    if valid and (plus or grouped) and digits >= 8:
        return SCORE_VALID
    if valid and (context or (trunk and digits >= 9)):
        return SCORE_POSSIBLE
    if possible and digits >= 8 and (plus or context):
        return SCORE_POSSIBLE
    if plus and grouped and digits >= 9 and _country_code_known(number):
        # `+54 9 3640 8192`: a known country code and digit groups after it is written as a
        # phone number even when the plan says the length is wrong (mistyped, or a mobile
        # prefix the metadata does not expect).
        return SCORE_POSSIBLE
    if possible and grouped and digits >= 9:
        # Randomly drawn numbers (examples, test data) fail validity in every region; a
        # grouped run of 9+ digits is still a phone number far more often than not.
        return SCORE_POSSIBLE
    return SCORE_BARE if valid else 0.0


class PhoneShapeRecognizer(EntityRecognizer):  # type: ignore[misc]
    """PHONE_NUMBER from candidates that `phonenumbers` accepts for one of many regions."""

    def __init__(self) -> None:
        super().__init__(
            supported_entities=["PHONE_NUMBER"], name="phone_shape", supported_language="en"
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        found = []
        for match in _CANDIDATE.finditer(text):
            number = match.group("number").rstrip(" (")
            # A trailing `)` belongs to the sentence unless it closes a group of the number.
            if number.endswith(")") and number.count(")") > number.count("("):
                number = number[:-1]
            start = match.start("number")
            score = phone_score(number, text[max(0, start - 40) : start])
            if score <= 0:
                continue
            end = match.end() if match.group("ext") else start + len(number)
            found.append(RecognizerResult("PHONE_NUMBER", start, end, score))
        return found
