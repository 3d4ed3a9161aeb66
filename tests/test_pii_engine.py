"""How the PII guard runs Presidio and spaCy: the BLAS under the entity recognizer, findings
kept for texts checked again, and Presidio recognizers left out (guardrails/pii.py)."""

from __future__ import annotations

import pytest

from guardrails.pii import FINDINGS_KEPT, PresidioPII
from rag.compose import build_pii
from rag.settings import Settings


@pytest.fixture(scope="module")
def pii(provisioned: Settings) -> PresidioPII:
    guard = build_pii(provisioned)
    assert guard.available
    return guard


def test_entity_recognizer_multiplies_with_numpy_blas_on_one_thread(pii: PresidioPII) -> None:
    from threadpoolctl import threadpool_info

    assert pii._analyzer is not None
    ner = pii._analyzer.nlp_engine.nlp["en"].get_pipe("ner")
    # blis falls back to its generic kernel on this machine's CPU (guardrails/pii_spacy.py).
    assert all(not getattr(layer.ops, "use_blis", True) for layer in ner.model.walk())
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas and all(lib["num_threads"] == 1 for lib in blas)


def test_a_text_checked_again_is_not_analysed_again(pii: PresidioPII) -> None:
    text = "Hi, this is Maren Kowalczyk, call me on +47 912 34 567 about the refund."
    before = pii.texts_analysed_again_avoided
    first = pii.find(text)
    second = pii.find(text)
    assert pii.texts_analysed_again_avoided == before + 1
    assert first == second and {f.entity_type for f in first} >= {"PERSON", "PHONE_NUMBER"}
    # A copy each time: a caller changing its list changes no one else's.
    second.clear()
    assert pii.find(text) == first
    # Another text is analysed, not served from the kept findings.
    other_text = text.replace("Maren Kowalczyk", "Ingrid Solberg")
    other = pii.find(other_text)
    assert pii.texts_analysed_again_avoided == before + 2
    assert "Ingrid Solberg" in [other_text[f.start : f.end] for f in other]


def test_findings_kept_are_bounded(pii: PresidioPII) -> None:
    for n in range(FINDINGS_KEPT + 5):
        pii._kept[n.to_bytes(16, "big")] = ()
    pii.find("Is lunch reimbursed during the Sales Kickoff?")
    assert len(pii._kept) <= FINDINGS_KEPT


@pytest.mark.parametrize(
    "text",
    [
        "Which licence covers the Q3 fleet, driver training or the forklift?",
        "Is a driver licence needed for the van in Zone A12?",
        "The driving licence test centre moved to Hall B7 in Q3.",
    ],
)
def test_a_code_near_the_word_licence_is_no_driver_licence(pii: PresidioPII, text: str) -> None:
    # Presidio's UsLicenseRecognizer scored these 0.65 with its context words; a licence
    # number is found by its label (tests/test_pii_labelled.py).
    assert [f.entity_type for f in pii.find(text)] == []
