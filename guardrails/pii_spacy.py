"""PERSON and LOCATION from spaCy's NER, kept only where the span reads like a name or a place.

`en_core_web_sm` tags capitalised business words as people or places: `Q3`, `the Legal team`,
`Okta`, `PO`, a canton code `(VD)`, a date `25/06/1960` as a place, and runs a name on into
what follows (`Franck Lambert - 09` of `… - 09 August 1936`). Presidio reports each at 0.85.
Here a span is trimmed to its words, and one that is a single English word, an abbreviation or
a modifier of a common noun needs corroboration: the names lookup, a title or a greeting.
It also chooses the BLAS the recognizer multiplies with (`ner_on_single_threaded_openblas`).
"""

from __future__ import annotations

import re
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult

from guardrails.pii_names import _WEAK_AFTER, COMMON_RANK, NameLookup

# Words that make the capitalised word after them a person whatever it means.
_PERSON_CUE = re.compile(
    r"(?i:\b(?:mr|mrs|ms|miss|mx|dr|prof|sir|dame|hi|hello|hey|dear|thanks|thank\syou|cheers"
    r"|regards|sincerely|name\sis|i\sam|i'm|this\sis|call\sme)\W{0,3})$"
)
# Before a capitalised word that modifies the noun after it ("the Legal team").
_DETERMINERS = frozenset({"the", "a", "an", "our", "your", "my", "their", "his", "her", "this"})
# Tokens a name may hold besides words: hyphens and apostrophes inside, particles.
_NAME_TOKEN = re.compile(r"^[^\W\d_]+(?:[-'’.][^\W\d_]*)*\.?$")
_COUNTRY_ABBREVIATIONS = frozenset({"US", "UK", "EU"})


def ner_on_single_threaded_openblas(pipeline: Any) -> None:
    """Run the entity recognizer's model on numpy's OpenBLAS, one thread (the step-by-step
    parse inside spaCy's compiled code still multiplies with blis).

    thinc multiplies with `blis`, whose wheel does not recognise this machine's AMD EPYC and
    falls back to its generic C kernel (`bli_arch_query_id` says `generic`); OpenBLAS picks
    its AVX2 kernels. Its second thread, though, waits on a core another guard or request
    is using: on the 2-core machine NER took 17.0 ms on a 1,000-character question with
    blis, 37-123 ms with OpenBLAS on two threads, 12.7 ms on one; entities identical on 100
    questions (measured on AMD EPYC, `lscpu`). The limit holds for the BLAS libraries loaded
    (numpy's OpenBLAS) in the whole process: nothing else here multiplies large matrices with
    them (torch has its own, Qdrant Edge is Rust)."""
    from thinc.api import NumpyOps
    from threadpoolctl import threadpool_limits

    if "ner" not in pipeline.pipe_names:
        return
    ops = NumpyOps(use_blis=False)
    for layer in pipeline.get_pipe("ner").model.walk():
        layer.ops = ops
    threadpool_limits(limits=1, user_api="blas")


class CorroboratedSpacyRecognizer(EntityRecognizer):  # type: ignore[misc]
    """spaCy's PERSON and LOCATION spans, trimmed, and dropped when nothing but
    capitalisation says they are a name or a place."""

    def __init__(
        self,
        lookup: NameLookup | None,
        english_words: frozenset[str],
        places: frozenset[str] = frozenset(),
    ) -> None:
        self._lookup = lookup
        self._english = english_words
        self._places = places
        super().__init__(
            supported_entities=["PERSON", "LOCATION"],
            name="spacy_corroborated",
            supported_language="en",
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        if nlp_artifacts is None:
            return []
        found = []
        # `Woolmer said …` after `Bob Woolmer`: a word of a longer name is that person again.
        name_words = {
            token.text
            for ent in nlp_artifacts.entities
            if ent.label_ == "PERSON" and len(_words(ent)) > 1
            for token in _words(ent)
        }
        for ent, score in zip(nlp_artifacts.entities, nlp_artifacts.scores, strict=False):
            label = ent.label_
            if label not in entities or label not in self.supported_entities:
                continue
            words = _words(ent)
            if not words:
                continue
            if label == "PERSON" and not self._person(text, ent, words, name_words):
                continue
            if label == "LOCATION" and not self._location(ent, words):
                continue
            if label == "LOCATION" and self._given_name_and_surname(words):
                label = "PERSON"  # spaCy's `Matteo Ruiz submitted …`, `Kenichi Shimokawa 's goal`
            found.append(
                RecognizerResult(label, words[0].idx, words[-1].idx + len(words[-1]), score)
            )
        return found

    def _known_name(self, word: str) -> bool:
        if self._lookup is None:
            return False
        return word in self._lookup.surnames or word in self._lookup.given

    def _person(self, text: str, ent: Any, words: list[Any], name_words: set[str]) -> bool:
        if _modifies_noun(ent):
            return False
        cued = bool(_PERSON_CUE.search(text[max(0, words[0].idx - 20) : words[0].idx]))
        if len(words) == 1:
            word = words[0].text
            if len(word) <= 3 and word.isupper():
                return cued  # `PO`, `VD`, `HR`
            end = words[0].idx + len(word)
            if cued or word in name_words or _WEAK_AFTER.search(text[end : end + 20]):
                return True  # `Thanks Per`, `Jade said`: a person whatever the word means
            if word.lower() in self._english:
                return False
            # `Jean-Pierre`: each part a name. A word the lookup lacks (`Spotify`) is a brand
            # or a product as often as a name.
            return self._lookup is None or all(
                self._known_name(part) for part in re.split(r"[-'’]", word) if part
            )
        # Two or more words: a name unless every one is an English word and none a name.
        return cued or any(
            self._known_name(w.text) or w.text.lower() not in self._english for w in words
        )

    def _given_name_and_surname(self, words: list[Any]) -> bool:
        """A place spaCy tagged that is a common given name and a surname, and no town,
        country or state of that name (`Santa Clara`, `Costa Rica` stay places)."""
        if self._lookup is None or len(words) < 2:
            return False
        rank = self._lookup.given.get(words[0].text)
        return (
            rank is not None
            and rank <= COMMON_RANK
            and words[-1].text in self._lookup.surnames
            and " ".join(w.text for w in words) not in self._places
        )

    def _location(self, ent: Any, words: list[Any]) -> bool:
        if len(words) == 1 and words[0].text.replace(".", "") in _COUNTRY_ABBREVIATIONS:
            return True  # `the U.S. economy`, `the UK`
        if _modifies_noun(ent):
            return False
        # `PO`, `VD`, `QA`: a two-letter capital is a department, a document kind or a canton
        # code far more often than a place.
        return not (len(words) == 1 and len(words[0].text) <= 2)


def _words(ent: Any) -> list[Any]:
    """The span's tokens from its first capitalised word to the last before a number, a dash
    or a bracket: `Franck Lambert - 09` is `Franck Lambert`; `94102976 Chilecito` is `Chilecito`."""
    tokens = list(ent)
    # A leading article too: spaCy's `the United States`.
    while tokens and (not _NAME_TOKEN.match(tokens[0].text) or tokens[0].text.islower()):
        tokens.pop(0)
    kept = []
    for token in tokens:
        if not _NAME_TOKEN.match(token.text):
            break
        kept.append(token)
    return kept


def _modifies_noun(ent: Any) -> bool:
    """`the Legal team`, `our Marketing budget`: a capitalised word between a determiner and
    a lower-case noun names a department or a product, not a person or a place."""
    doc = ent.doc
    before = doc[ent.start - 1].lower_ if ent.start > 0 else ""
    after = doc[ent.end] if ent.end < len(doc) else None
    return (
        before in _DETERMINERS
        and after is not None
        and after.is_alpha
        and after.text.islower()
        # No tagger runs (guardrails/pii.py): a word off spaCy's stop list stands in for a
        # noun (`the UK last week` is no modifier).
        and not after.is_stop
        and after.pos_ in ("NOUN", "PROPN", "")
    )
