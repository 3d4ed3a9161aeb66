"""Identifiers a text names before giving them: "account number 3847283911", "driver's license
K932-778-3840", "PAN card number 'ABPCJ4567R'".

Presidio's recognizers for bank numbers and licences match any run of digits at a score of
0.05-0.4, so under the guard's threshold (0.5) they never fire, and above it they would flag
every long number. The label in front is the evidence: with it, any code of four to 26 letters
and digits that holds a digit is hidden, whatever its national format.
"""

from __future__ import annotations

import re
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult

# The words that introduce each kind of identifier. Possessives and "number/no./#" are optional.
_LABELS: dict[str, str] = {
    "US_BANK_NUMBER": (
        r"\b(?:(?:bank|checking|savings|current|deposit|recipient|personal|member)\s+)?"
        r"(?:account|acct|a/c|acc(?:num)?)s?"
        r"(?:\s+(?:number|no\.?|num|#|details?|id))?"
        r"(?:\s+(?:like|ending\s+(?:with|in)|of|for))?"
    ),
    "US_DRIVER_LICENSE": (
        r"\b(?:driver[’']?s?|driving)\s+licen[cs]e(?:\s+(?:number|no\.?|#))?"
        r"|\blicen[cs]e\s+(?:number|no\.?|#)"
    ),
    "US_PASSPORT": r"\bpassport(?:\s+(?:number|no\.?|#))?",
    "IN_PAN": r"\bPAN(?:\s+card)?(?:\s+(?:number|no\.?|#))?",
    "IN_AADHAAR": r"\baadh?aa?r(?:\s+(?:card|number|no\.?|#))*",
    "IN_VOTER": r"\bvoter\s+id(?:\s+(?:card|number|no\.?|#))?",
}
# "is", "was" or a few characters of punctuation, or a short tag ("DL:", "ACC:"), between
# label and value; the value has a digit and no lower-case letters, so plain words after a
# label never match; digit groups after a space continue it.
_VALUE = (
    r"(?i:\s+(?:is|was|are|were))?"
    r"[\s:#'\"‘“(=-]{0,4}(?:[A-Z]{2,8}\s?:\s?)?"
    r"(?P<value>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,24}[A-Z0-9]"
    # Digit groups that continue it after a space belong to it: an Aadhaar number is written
    # `4821 7730 1190`, and hiding only `4821` would leave eight of its twelve digits.
    r"(?:[ ]\d{2,6}(?![A-Za-z0-9-])){0,5})(?![A-Za-z0-9])"
)
# Above the shape guesses it overlaps (a 10-digit account number is also a phone number at
# 0.75; spaCy calls "MORGA753116SM9IJ" a person at 0.85): the label says which it is.
SCORE = 0.9


# An account number written as an IBAN is an IBAN: the IBAN recognizers report it as such.
_IBAN_SHAPE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}")


class LabelledIdentifierRecognizer(EntityRecognizer):  # type: ignore[misc]
    """One Presidio recognizer for every labelled identifier kind that is enabled."""

    def __init__(self, entities: tuple[str, ...]) -> None:
        self._patterns = {
            entity: re.compile(
                f"(?i:{_LABELS[entity]}){_VALUE}",
            )
            for entity in entities
            if entity in _LABELS
        }
        super().__init__(
            supported_entities=list(self._patterns),
            name="labelled_identifier",
            supported_language="en",
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        found = []
        for entity, pattern in self._patterns.items():
            if entity not in entities:
                continue
            for match in pattern.finditer(text):
                if entity == "US_BANK_NUMBER" and _IBAN_SHAPE.fullmatch(match.group("value")):
                    continue
                start, end = match.span("value")
                found.append(RecognizerResult(entity, start, end, SCORE))
        return found


def labelled_entities() -> tuple[str, ...]:
    return tuple(_LABELS)
