"""PII: Presidio finds it, consistent placeholders replace it, and only the asker gets it back.

A question's `Ada Lovelace` becomes `<PERSON_1>` for the whole conversation, so the model can
still reason about "her"; the answer shown to the person who wrote the name has it restored,
even when a placeholder arrives split across streamed tokens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrails.pii_places import PlaceLookup
from guardrails.verdict import GuardContext, Verdict, clean, flagged, unavailable

PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_(\d+)>")
# The longest tail that may still grow into a placeholder, e.g. "<EMAIL_ADDR".
_PARTIAL_PLACEHOLDER = re.compile(r"<[A-Z_0-9]{0,40}$")


@dataclass
class PseudonymVault:
    """One conversation's mapping between real values and placeholders. Never leaves the
    process that serves the asker; nothing else (model, audit, cache) sees the values."""

    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    _by_placeholder: dict[str, str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def placeholder_for(self, entity_type: str, value: str) -> str:
        key = (entity_type, value.strip())
        with self._lock:
            existing = self._by_value.get(key)
            if existing is not None:
                return existing
            self._counts[entity_type] = self._counts.get(entity_type, 0) + 1
            placeholder = f"<{entity_type}_{self._counts[entity_type]}>"
            self._by_value[key] = placeholder
            self._by_placeholder[placeholder] = value.strip()
            return placeholder

    def restore(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda m: self._by_placeholder.get(m.group(0), m.group(0)), text)

    def __len__(self) -> int:
        return len(self._by_placeholder)


class StreamRestorer:
    """Restores placeholders in streamed text. Holds back a tail that could still be the start
    of a placeholder (`<PER`), so a split placeholder is never shown half-restored."""

    def __init__(self, vault: PseudonymVault) -> None:
        self._vault = vault
        self._pending = ""

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        partial = _PARTIAL_PLACEHOLDER.search(text)
        if partial:
            self._pending = text[partial.start() :]
            text = text[: partial.start()]
        else:
            self._pending = ""
        return self._vault.restore(text)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self._vault.restore(text)


@dataclass(frozen=True)
class PIIFinding:
    entity_type: str
    start: int
    end: int
    score: float


# Shapes of card numbers and IBANs whose checksum fails or that are partly masked, and e-mail
# addresses on domains outside the public suffix list (.internal, .corp, .example). Presidio's
# own recognizers validate checksums and top-level domains, which is right for finding *valid*
# values but lets a mistyped, masked or intranet one through; for a privacy guard a lookalike
# is still worth hiding.
_FORMAT_PATTERNS: dict[str, tuple[str, float]] = {
    "EMAIL_ADDRESS": (r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\b", 0.6),
    "CREDIT_CARD": (r"\b\d{4}[ -]?[\dX*]{4}[ -]?[\dX*]{4}[ -]?\d{4}\b", 0.6),
    "IBAN_CODE": (r"\b[A-Z]{2}\d{2}[ ]?(?:[A-Z0-9]{4}[ ]?){2,7}[A-Z0-9]{0,4}\b", 0.6),
}


def _adds_words(text: str, start: int, end: int, inside: list[PIIFinding]) -> bool:
    """Whether text[start:end] holds a letter or digit outside the `inside` spans: spaCy's
    `SY925302A.` adds only a full stop to the NI number, and does not rename it."""
    covered: set[int] = set()
    for k in inside:
        covered.update(range(k.start, k.end))
    return any(text[i].isalnum() for i in range(start, end) if i not in covered)


def _resolve_overlaps(text: str, results: list[Any]) -> list[PIIFinding]:
    """Non-overlapping findings. Of two that overlap the higher score (then the longer span)
    wins, except that spans of one type, or a span containing others, merge into one."""
    ranked = sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start))
    kept: list[PIIFinding] = []
    for r in ranked:
        overlapped = [k for k in kept if r.start < k.end and k.start < r.end]
        if not overlapped:
            kept.append(PIIFinding(r.entity_type, r.start, r.end, r.score))
        elif all(k.entity_type == r.entity_type for k in overlapped) or (
            all(r.start <= k.start and k.end <= r.end for k in overlapped)
            and _adds_words(text, r.start, r.end, overlapped)
        ):
            # A weaker span of the same type that sticks out (spaCy's `Paris` inside a
            # whole street address), or one that contains the stronger ones, widens what
            # is hidden: a placeholder over part of a value leaves the rest in the clear.
            # The containing span names the whole: a street named after a person is an
            # address.
            kept = [k for k in kept if k not in overlapped]
            kept.append(
                PIIFinding(
                    r.entity_type,
                    min(r.start, *(k.start for k in overlapped)),
                    max(r.end, *(k.end for k in overlapped)),
                    max(r.score, *(k.score for k in overlapped)),
                )
            )
    return sorted(kept, key=lambda f: f.start)


def _offline_tldextract() -> None:
    # Presidio's e-mail recognizer calls tldextract, which would try to download the public
    # suffix list on first use (and print a traceback offline). The bundled list is enough.
    import tldextract
    import tldextract.tldextract as tld_module

    tld_module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())


def _ner_only_engine(spacy_package: str) -> Any:
    """Presidio's spaCy engine running the entity recognizer alone.

    `en_core_web_sm`'s NER has its own token vectors; the shared tok2vec, the tagger, the
    parser, the attribute ruler and the lemmatizer serve only tags, the parse and lemmas, and
    took 40 % of the time on a 1,000-character question. Presidio matches its context words
    ("phone", "card") against lemmas: the lower-cased word stands in for the lemma (`cards`
    no longer counts as `card`)."""
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

    from guardrails.pii_spacy import ner_on_single_threaded_openblas

    class NerOnlySpacyEngine(SpacyNlpEngine):  # type: ignore[misc]
        def load(self) -> None:
            super().load()
            pipelines: dict[str, Any] = self.nlp or {}
            for pipeline in pipelines.values():
                for name in ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"):
                    if name in pipeline.pipe_names:
                        pipeline.disable_pipe(name)
                ner_on_single_threaded_openblas(pipeline)

        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
            entities, scores = self._get_updated_entities(
                self._get_entities(doc), self._get_scores_for_entities(doc)
            )
            return NlpArtifacts(
                entities=entities,
                tokens=doc,
                tokens_indices=[token.idx for token in doc],
                lemmas=[token.lower_ for token in doc],
                nlp_engine=self,
                language=language,
                scores=scores,
            )

    engine = NerOnlySpacyEngine(models=[{"lang_code": "en", "model_name": spacy_package}])
    engine.load()
    return engine


class PresidioPII:
    """The PII guard: Presidio's analyzer with spaCy NER, placeholders from a PseudonymVault."""

    name = "pii"

    def __init__(
        self,
        spacy_package: str,
        entities: Iterable[str],
        score_threshold: float,
        custom_patterns: dict[str, str] | None = None,
        names_lookup: Path | None = None,
        places_lookup: Path | None = None,
    ) -> None:
        self.entities = tuple(entities)
        self.score_threshold = score_threshold
        self._names_lookup = names_lookup
        self._places_lookup = places_lookup
        # spaCy's English lemma index: what tells a name or a town from an ordinary word.
        self.english_words: frozenset[str] = frozenset()
        self.places = PlaceLookup(frozenset(), frozenset())
        self._analyzer = None
        self._load_error = ""
        try:
            self._analyzer = self._build_analyzer(spacy_package, custom_patterns or {})
        except (OSError, ImportError, ValueError, EOFError) as exc:
            # EOFError: a truncated lookup file (gzip ends early).
            self._load_error = (
                f"Presidio could not load spaCy model {spacy_package!r}, the name lookup "
                f"{names_lookup} or the place lookup {places_lookup} ({exc}); run `guardrag "
                "models pull`, or set guards.pii.spacy_model / name_gazetteer / place_gazetteer"
            )

    def _build_analyzer(self, spacy_package: str, custom_patterns: dict[str, str]):  # type: ignore[no-untyped-def]
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer

        from guardrails.pii_addresses import AddressRecognizer
        from guardrails.pii_labelled import LabelledIdentifierRecognizer
        from guardrails.pii_personal import PersonalDetailsRecognizer
        from guardrails.pii_phones import PhoneShapeRecognizer

        _offline_tldextract()
        # Presidio logs the words around each finding ("Context list is: …") at DEBUG: that is
        # the PII itself. Its loggers stay at WARNING whatever level the application runs at.
        for name in ("presidio-analyzer", "presidio_analyzer"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from guardrails import pii_names, pii_places

        nlp_engine = _ner_only_engine(spacy_package)
        # The lemmatizer's tables are there, switched off or not.
        english = pii_names.english_words(nlp_engine.nlp["en"])
        self.english_words = english
        analyzer = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])
        for entity_type, (pattern, score) in _FORMAT_PATTERNS.items():
            analyzer.registry.add_recognizer(
                PatternRecognizer(
                    supported_entity=entity_type,
                    name=f"{entity_type.lower()}_format",
                    patterns=[
                        Pattern(name=f"{entity_type.lower()}_format", regex=pattern, score=score)
                    ],
                )
            )
        labelled = LabelledIdentifierRecognizer(self.entities)
        if labelled.supported_entities:
            analyzer.registry.add_recognizer(labelled)
        # Presidio's own bank, passport and licence recognizers score any run of digits or
        # letters 0.05-0.3 (0.4-0.65 with a context word): on the tune set and pii_dev.jsonl
        # together one of their spans reached the threshold, a wrong one, while they gave
        # 400 low-scored spans per 100 long questions to score and deduplicate. The labelled
        # recognizer finds these identifiers by the label in front.
        for name in ("UsBankRecognizer", "UsLicenseRecognizer", "UsPassportRecognizer"):
            analyzer.registry.remove_recognizer(name)
        if "PHONE_NUMBER" in self.entities:
            # Presidio's own scores a number without a context word at 0.4 and runs the
            # matcher once per region over the whole text (guardrails/pii_phones.py).
            analyzer.registry.remove_recognizer("PhoneRecognizer")
            analyzer.registry.add_recognizer(PhoneShapeRecognizer())
        places = pii_places.places_at(self._places_lookup)
        self.places = places
        if "LOCATION" in self.entities:
            analyzer.registry.add_recognizer(AddressRecognizer(places.town_names(english)))
        personal = PersonalDetailsRecognizer(self.entities)
        if personal.supported_entities:
            analyzer.registry.add_recognizer(personal)
        from guardrails.pii_spacy import CorroboratedSpacyRecognizer

        lookup = None
        if self._names_lookup is not None and "PERSON" in self.entities:
            if not self._names_lookup.exists():
                pii_names.build_lookup(self._names_lookup)
            lookup = pii_names.load_lookup(self._names_lookup)
            analyzer.registry.add_recognizer(pii_names.NameGazetteerRecognizer(lookup, english))
        # spaCy's own spans, trimmed and corroborated (guardrails/pii_spacy.py): Presidio's
        # recognizer reports every capitalised `Q3` or `Legal` it tags.
        analyzer.registry.remove_recognizer("SpacyRecognizer")
        analyzer.registry.add_recognizer(
            CorroboratedSpacyRecognizer(lookup, english, places.places)
        )
        for entity_type, pattern in custom_patterns.items():
            analyzer.registry.add_recognizer(
                PatternRecognizer(
                    supported_entity=entity_type,
                    patterns=[Pattern(name=entity_type.lower(), regex=pattern, score=0.9)],
                )
            )
        self.entities = tuple(dict.fromkeys((*self.entities, *custom_patterns)))
        return analyzer

    @property
    def available(self) -> bool:
        return self._analyzer is not None

    def find(self, text: str) -> list[PIIFinding]:
        """Non-overlapping findings (see `_resolve_overlaps`). Nothing is kept between calls:
        a cache of findings shared by every user would tell one, by the time a check takes,
        whether another had sent the same text."""
        if self._analyzer is None:
            raise RuntimeError(self._load_error)
        results = self._analyzer.analyze(
            text=text,
            language="en",
            entities=list(self.entities),
            score_threshold=self.score_threshold,
        )
        if "DATE_OF_BIRTH" in self.entities:
            from guardrails.pii_personal import birth_dates_beside_names

            results = birth_dates_beside_names(text, results)
        return _resolve_overlaps(text, results)

    def pseudonymise(self, text: str, vault: PseudonymVault) -> tuple[str, list[PIIFinding]]:
        findings = self.find(text)
        pieces: list[str] = []
        cursor = 0
        for f in findings:
            pieces.append(text[cursor : f.start])
            pieces.append(vault.placeholder_for(f.entity_type, text[f.start : f.end]))
            cursor = f.end
        pieces.append(text[cursor:])
        return "".join(pieces), findings

    def check_sync(self, text: str, vault: PseudonymVault | None = None) -> Verdict:
        return self.analyse(text, vault)[0]

    def analyse(
        self, text: str, vault: PseudonymVault | None = None
    ) -> tuple[Verdict, list[PIIFinding]]:
        """The verdict and the spans behind it (offsets and types, never values)."""
        started = time.perf_counter()
        if self._analyzer is None:
            return unavailable(self.name, self._load_error), []
        try:
            sanitized, findings = self.pseudonymise(
                text, vault if vault is not None else PseudonymVault()
            )
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            return unavailable(self.name, f"Presidio failed: {type(exc).__name__}"), []
        ms = (time.perf_counter() - started) * 1000
        if not findings:
            return clean(self.name).timed(ms), []
        types = tuple(sorted({f.entity_type for f in findings}))
        verdict = flagged(
            self.name,
            score=max(f.score for f in findings),
            categories=types,
            reason=f"{len(findings)} PII span(s): {', '.join(types)}",
            sanitized=sanitized,
        )
        return verdict.timed(ms), findings

    async def check(
        self, text: str, context: GuardContext, vault: PseudonymVault | None = None
    ) -> Verdict:
        return await asyncio.to_thread(self.check_sync, text, vault)
