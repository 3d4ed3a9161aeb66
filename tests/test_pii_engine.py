"""How the PII guard runs Presidio and spaCy: the BLAS under the entity recognizer, and
Presidio recognizers left out (guardrails/pii.py)."""

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


def test_entity_recognizer_multiplies_with_numpy_blas_on_one_thread(pii: PresidioPII) -> None:
    from threadpoolctl import threadpool_info

    assert pii._analyzer is not None
    ner = pii._analyzer.nlp_engine.nlp["en"].get_pipe("ner")
    # blis falls back to its generic kernel on this machine's CPU (guardrails/pii_spacy.py).
    assert all(not getattr(layer.ops, "use_blis", True) for layer in ner.model.walk())
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas and all(lib["num_threads"] == 1 for lib in blas)


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
