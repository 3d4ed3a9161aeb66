"""Names spaCy's small English model misses (`Siobhan Ní Bhriain`, `Zhang Wei (张伟)`, `Eivind
Rønning`, `Thanks Lars,`), found with given names and surnames of 100+ countries.

The lists come from the `names-dataset` package, which needs 3.2 GB of memory loaded whole;
`build_lookup` derives a compact file from it once (names ranked in the top `MAX_RANK` of some
country, about 1 MB gzipped) and the guard loads only that. Capitalisation, the pairing of a
given name with a surname, and English words (spaCy's own lemma index) keep ordinary
capitalised words out: `Atlas Room`, `May Report` and `Rose Garden` are not people.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult
from spacy.lang.en.stop_words import STOP_WORDS

LOOKUP_FILE = "names-lookup-v1.tsv.gz"
# Rank within a country (1 = most common). 2,000 keeps 120k given names and 140k surnames; past
# it the lists fill with ordinary words (`Street` is a given name at 9,333 in GB).
MAX_RANK = 2000
# A given name this common may pair with a surname the lists do not hold (`Siobhan Ní Bhriain`).
COMMON_RANK = 500

_UP = "A-Z" + "".join(chr(c) for c in range(0x00C0, 0x0250) if chr(c).isupper())
_LOW = "a-zß" + "".join(chr(c) for c in range(0x00C0, 0x0250) if chr(c).islower())
_WORD = rf"[{_UP}][{_LOW}]+(?:[{_UP}][{_LOW}]+)?(?:[-'’][{_UP}]?[{_LOW}]+)*"
# Particles inside a name: Irish, Dutch, German, Romance, Arabic.
_PARTICLES = (
    "Ní|Nic|Ó|Ní|Mac|Mc|Uí|van|von|der|den|de|da|di|du|del|della|la|le|dos|das|bin|ibn|bint"
    "|al|el|Al|El|abu|Abu|ben|ter|ten|zu"
)
_CANDIDATE = re.compile(
    rf"(?<![\w@.])(?P<words>{_WORD}(?:\s(?:(?:{_PARTICLES})\s)?{_WORD}){{0,3}})"
    r"(?P<script>\s?\([\u3400-\u9fff\u0600-\u06ff\u0400-\u04ff ]{2,12}\))?"
)
# Before a lone given name: a greeting or an introduction makes it a name whatever it means.
_STRONG_BEFORE = re.compile(
    r"(?i:\b(?:hi|hello|hey|dear|thanks|thank\syou|cheers|regards|sincerely|name\sis|"
    r"i\sam|i'm|this\sis|call\sme|ask|tell|cc)\W{0,3})$"
)
# Around a lone given name: weaker, so only for names that are not English words.
_WEAK_BEFORE = re.compile(
    r"(?i:\b(?:from|with|met|by|to|and|colleague|customer|mr|ms|mrs)\W{0,3})$"
)
_WEAK_AFTER = re.compile(
    r"^(?:,\s)?\s?(?:said|says|asked|wrote|told|called|replied|mentioned|is|was|will|has|had"
    r"|and\sI|confirmed|signed|left|moved|from\s(?:the\s)?[a-z]{2,})\b"
)
# After a lone given name that is also an English word (`Jade`, `Victor`, `Tyler`, all in
# WordNet): a verb of speaking, perhaps after the person's team, makes it a person.
# `Sales said` stays clear: the rule needs a given name, and team words are none.
_SPEAKS_AFTER = re.compile(
    r"^(?:,\s)?\s?(?:from\s(?:the\s)?[a-z]{2,}(?:\s[a-z]{2,})?,?\s)?(?:said|says|asked|asks"
    r"|wrote|writes|told|tells|replied|replies|mentioned|confirmed|explained|emailed|phoned"
    r"|texted)\b"
)
# `on Friday said`, `in April said`: a day or a month, not the speaker (pii_dev.jsonl's news).
_TIME_BEFORE = re.compile(
    r"\b(?:on|in|at|by|since|until|till|before|after|last|next|this|every|early|late)\s$"
)
# spaCy's stop words (`The`, `With`, `Will`) start or end no name. The guard runs spaCy's
# NER without the tagger (guardrails/pii.py), so the list stands in for part-of-speech tags.
_FUNCTION_WORDS = frozenset(STOP_WORDS)
SCORE_FULL = 0.7
SCORE_SINGLE = 0.6


@dataclass(frozen=True)
class NameLookup:
    given: dict[str, int]
    surnames: frozenset[str]


def build_lookup(target: Path) -> Path:
    """Derive the compact lookup from the installed `names-dataset` (about 1 min, 1.2 GB peak:
    once per machine, at `guardrag models pull` or the first guard built)."""
    import gc
    import pickle

    import names_dataset

    source = Path(names_dataset.__file__).parent / "v3"
    lines: list[str] = []
    for kind, name in (("G", "first_names.pkl.gz"), ("S", "last_names.pkl.gz")):
        with gzip.open(source / name) as raw:
            # The package's own data file, read as the package itself reads it.
            table = pickle.load(raw)
        for word, info in table.items():
            ranks = info.get("rank") or {}
            best = min(ranks.values(), default=None)
            if best is not None and best <= MAX_RANK and " " not in word:
                lines.append(f"{kind}\t{word}\t{best}")
        del table
        gc.collect()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    with gzip.open(partial, "wt", encoding="utf-8") as out:
        out.write("\n".join(lines))
    partial.replace(target)
    return target


@functools.cache
def load_lookup(path: Path) -> NameLookup:
    given: dict[str, int] = {}
    surnames: set[str] = set()
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            kind, word, rank = line.rstrip("\n").split("\t")
            if kind == "G":
                given[word] = int(rank)
            else:
                surnames.add(word)
    return NameLookup(given, frozenset(surnames))


class NameGazetteerRecognizer(EntityRecognizer):  # type: ignore[misc]
    """PERSON for capitalised words that pair a known given name with a surname, or a lone
    given name after a greeting."""

    def __init__(self, lookup: NameLookup, english_words: frozenset[str]) -> None:
        self._lookup = lookup
        self._english = english_words
        super().__init__(
            supported_entities=["PERSON"], name="name_gazetteer", supported_language="en"
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        found = []
        for m in _CANDIDATE.finditer(text):
            words = list(re.finditer(rf"{_WORD}|(?:{_PARTICLES})(?=\s)", m.group("words")))
            offset = m.start("words")
            for i in range(len(words)):
                span = self._name_from(text, words[i:], offset)
                if span is None:
                    continue
                start, end, score = span
                if end == m.end("words") and m.group("script"):
                    end = m.end("script")  # `Zhang Wei (张伟)`: the name in its own script too
                found.append(RecognizerResult("PERSON", start, end, score))
                break
        return found

    def _name_from(
        self, text: str, words: list[re.Match[str]], offset: int
    ) -> tuple[int, int, float] | None:
        first = words[0].group()
        rank = self._lookup.given.get(first)
        if rank is None or first.lower() in _FUNCTION_WORDS:
            return None
        start = offset + words[0].start()
        # The longest run that ends on a name-like word: `Siobhan Ní Bhriain`, `Ulf Nyberg`.
        for last_index in range(len(words) - 1, 0, -1):
            last = words[last_index].group()
            if last.lower() in _FUNCTION_WORDS:
                continue
            known = last in self._lookup.surnames
            first_english = first.lower() in self._english
            last_english = last.lower() in self._english
            if first_english and last_english:
                continue  # `Rose Garden`, `Grace Hopper`: spaCy's to judge
            if known or (rank <= COMMON_RANK and not last_english):
                return start, offset + words[last_index].end(), SCORE_FULL
        end = offset + words[0].end()
        before, after = text[max(0, start - 20) : start], text[end : end + 20]
        if _STRONG_BEFORE.search(before):
            return start, end, SCORE_SINGLE
        if first.lower() not in self._english and (
            _WEAK_BEFORE.search(before) or _WEAK_AFTER.search(after)
        ):
            return start, end, SCORE_SINGLE
        if (
            rank <= COMMON_RANK
            and _SPEAKS_AFTER.search(text[end : end + 40])
            and not _TIME_BEFORE.search(before)
        ):
            return start, end, SCORE_SINGLE
        return None


def english_words(nlp: Any) -> frozenset[str]:
    """The words of spaCy's English lemma index (WordNet's nouns, verbs, adjectives, adverbs)."""
    lemmatizer = nlp.get_pipe("lemmatizer")
    index = lemmatizer.lookups.get_table("lemma_index")
    return frozenset(word for words in index.values() for word in words)
