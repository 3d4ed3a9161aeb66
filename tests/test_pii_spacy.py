"""spaCy's PERSON and LOCATION spans as the PII guard keeps them (guardrails/pii_spacy.py)."""

from __future__ import annotations

import pytest

from guardrails.pii import PresidioPII
from rag.compose import build_pii
from rag.settings import Settings


@pytest.fixture(scope="module")
def pii(provisioned: Settings) -> PresidioPII:
    guard = build_pii(provisioned)
    assert guard.available
    return guard


@pytest.mark.parametrize(
    "text",
    [
        "Procurement signed the Datadog renewal in Q3.",
        "Where is the Jira board for Platform Engineering?",
        "Reset my VPN token; the Okta prompt keeps failing since the 2.3 update.",
    ],
)
def test_product_and_team_words_spacy_tags_pass_untouched(pii: PresidioPII, text: str) -> None:
    # spaCy's small model tags these `Datadog` as a place and `Jira`, `Okta` as people.
    assert pii.find(text) == []


def test_a_name_spacy_runs_on_into_a_date_is_cut_at_the_dash(pii: PresidioPII) -> None:
    text = "Passenger Franck Lambert - 09 August 1936 - needs a wheelchair."
    people = [text[f.start : f.end] for f in pii.find(text) if f.entity_type == "PERSON"]
    assert people == ["Franck Lambert"]


def _spacy_spans_as_kept(pii: PresidioPII, text: str, tagged: str, label: str) -> list[tuple]:
    """What the guard keeps of spaCy's entity `tagged`, labelled `label` as the small model
    sometimes labels it (a person as a place), on a real doc of `text`."""
    from spacy.tokens import Span

    assert pii._analyzer is not None
    engine = pii._analyzer.nlp_engine
    doc = engine.nlp["en"].make_doc(text)
    start = text.index(tagged)
    span = doc.char_span(start, start + len(tagged), label=label)
    assert isinstance(span, Span)
    doc.ents = [span]
    recognizer = next(
        r for r in pii._analyzer.registry.recognizers if r.name == "spacy_corroborated"
    )
    results = recognizer.analyze(
        text, ["PERSON", "LOCATION"], engine._doc_to_nlp_artifact(doc, "en")
    )
    return [(r.entity_type, text[r.start : r.end]) for r in results]


def test_a_given_name_and_surname_spacy_calls_a_place_is_a_person(pii: PresidioPII) -> None:
    text = "During onboarding Matteo Ferri submitted his tax form."
    assert _spacy_spans_as_kept(pii, text, "Matteo Ferri", "GPE") == [("PERSON", "Matteo Ferri")]


@pytest.mark.parametrize("place", ["Santa Clara", "Costa Rica"])
def test_a_place_named_like_a_person_stays_a_place(pii: PresidioPII, place: str) -> None:
    text = f"The team flew to {place} for the launch."
    assert _spacy_spans_as_kept(pii, text, place, "GPE") == [("LOCATION", place)]
