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
