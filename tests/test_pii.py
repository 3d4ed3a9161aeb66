"""Presidio with spaCy, for real: what it finds, the placeholders, and restoring them."""

from __future__ import annotations

import datetime

import pytest

from guardrails.pii import PresidioPII, PseudonymVault, StreamRestorer
from rag.compose import build_pii
from rag.settings import Settings


@pytest.fixture(scope="module")
def pii(provisioned: Settings) -> PresidioPII:
    guard = build_pii(provisioned)
    assert guard.available
    return guard


def test_name_email_and_phone_become_placeholders(pii: PresidioPII) -> None:
    vault = PseudonymVault()
    text = "I am Ada Lovelace, write to ada.lovelace@example.com or call +44 20 7946 0101."
    sanitized, findings = pii.pseudonymise(text, vault)
    assert "Ada Lovelace" not in sanitized and "ada.lovelace@example.com" not in sanitized
    # No digit group of the phone number may pass, not only the whole of it.
    assert not any(group in sanitized for group in ("7946", "0101", "+44 20"))
    assert "<PERSON_1>" in sanitized and "<EMAIL_ADDRESS_1>" in sanitized
    assert "<PHONE_NUMBER_1>" in sanitized
    assert {f.entity_type for f in findings} >= {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER"}
    assert vault.restore(sanitized) == text


def test_the_same_person_keeps_one_placeholder_for_the_conversation(pii: PresidioPII) -> None:
    vault = PseudonymVault()
    first, _ = pii.pseudonymise("Grace Hopper asked about leave.", vault)
    second, _ = pii.pseudonymise("Did Grace Hopper get an answer? Alan Turing did.", vault)
    assert "<PERSON_1>" in first and "<PERSON_1>" in second and "<PERSON_2>" in second


def test_text_without_pii_is_allowed(pii: PresidioPII) -> None:
    verdict = pii.check_sync("How many days of annual leave do I get?")
    assert verdict.outcome == "allow" and verdict.sanitized_text is None


def test_custom_pattern_recognises_employee_ids(provisioned: Settings) -> None:
    from dataclasses import replace

    settings = provisioned.model_copy(
        update={
            "guards": provisioned.guards.model_copy(
                update={
                    "pii": provisioned.guards.pii.model_copy(
                        update={"custom_patterns": {"EMPLOYEE_ID": r"\bEMP-\d{6}\b"}}
                    )
                }
            )
        }
    )
    guard = build_pii(settings)
    verdict = guard.check_sync("My badge says EMP-123456.")
    assert "EMPLOYEE_ID" in verdict.categories
    assert replace(verdict).sanitized_text == "My badge says <EMPLOYEE_ID_1>."


def test_missing_spacy_model_makes_the_guard_unavailable_not_permissive() -> None:
    guard = PresidioPII("no_such_spacy_model_xyz", ["PERSON"], 0.5)
    verdict = guard.check_sync("Ada Lovelace")
    assert verdict.outcome == "unavailable"
    assert "no_such_spacy_model_xyz" in verdict.reason


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_placeholder_split_across_stream_deltas_is_restored_whole(cut: int) -> None:
    vault = PseudonymVault()
    placeholder = vault.placeholder_for("PERSON", "Ada Lovelace")
    streamed = f"Hello {placeholder}, welcome."
    restorer = StreamRestorer(vault)
    shown = [
        restorer.feed(streamed[: cut + 5]),
        restorer.feed(streamed[cut + 5 :]),
        restorer.flush(),
    ]
    assert "".join(shown) == "Hello Ada Lovelace, welcome."
    assert all("<PER" not in piece for piece in shown)


def test_unknown_placeholders_and_plain_angle_brackets_pass_through() -> None:
    restorer = StreamRestorer(PseudonymVault())
    out = restorer.feed("a < b and <PERSON_9> ") + restorer.feed("<ok") + restorer.flush()
    assert out == "a < b and <PERSON_9> <ok"


def test_card_numbers_and_ibans_are_hidden_even_when_their_checksum_fails(pii: PresidioPII) -> None:
    vault = PseudonymVault()
    text = "Card 4716 9876 2234 1561, masked 4532 **** **** 7890, IBAN NL55TRIO012345678."
    sanitized, findings = pii.pseudonymise(text, vault)
    assert "9876" not in sanitized and "7890" not in sanitized and "TRIO" not in sanitized
    assert [f.entity_type for f in findings].count("CREDIT_CARD") == 2
    assert vault.restore(sanitized) == text


def test_an_address_is_hidden_whole_not_only_the_city_in_it(pii: PresidioPII) -> None:
    vault = PseudonymVault()
    text = "Please send it to 12 Rue de Rivoli, 75001 Paris before Friday."
    sanitized, findings = pii.pseudonymise(text, vault)
    assert sanitized == "Please send it to <LOCATION_1> before Friday."
    assert [f.entity_type for f in findings] == ["LOCATION"]
    assert vault.restore(sanitized) == text


def test_a_birth_date_is_hidden_and_other_dates_are_not(pii: PresidioPII) -> None:
    born = pii.find("My DOB is 12/05/1980, can you confirm my account?")
    assert [f.entity_type for f in born] == ["DATE_OF_BIRTH"]
    assert pii.find("The invoice dated 12/05/2024 is due in 30 days.") == []


def test_a_phone_number_without_a_context_word_is_found_by_its_shape(pii: PresidioPII) -> None:
    text = "Details: 0151 496 0123 / +46 (0)8 123 456 78"
    found = [(f.entity_type, text[f.start : f.end]) for f in pii.find(text)]
    assert found == [
        ("PHONE_NUMBER", "0151 496 0123"),
        ("PHONE_NUMBER", "+46 (0)8 123 456 78"),
    ]


def test_an_order_number_alone_is_not_taken_for_a_phone_number(pii: PresidioPII) -> None:
    assert pii.find("Order 5521093384 shipped on Tuesday.") == []


@pytest.mark.parametrize(
    "text",
    [
        "Please book the Atlas Room for the May Report review.",
        "The Rose Garden tour starts at the North Gate.",
        "Can the Marketing team expense a Spotify subscription?",
        "Send the Travel Policy to the Help Desk before Christmas.",
    ],
)
def test_capitalised_words_that_are_also_names_are_not_people(pii: PresidioPII, text: str) -> None:
    assert "PERSON" not in {f.entity_type for f in pii.find(text)}


def test_a_name_with_its_own_script_is_hidden_whole(pii: PresidioPII) -> None:
    vault = PseudonymVault()
    sanitized, _ = pii.pseudonymise("Zhang Wei (张伟) and Siobhan Ní Bhriain signed.", vault)
    assert sanitized == "<PERSON_1> and <PERSON_2> signed."


@pytest.mark.parametrize(
    ("text", "name", "born"),
    [
        ("Please add Ann Keller (14/03/1987) to the family policy.", "Ann Keller", "14/03/1987"),
        (
            "Passenger Franck Lambert - 09 August 1936 - needs a wheelchair.",
            "Franck Lambert",
            "09 August 1936",
        ),
        ("Policyholder: Tom Pieters, 1985-09-25, Jimdreef 60.", "Tom Pieters", "1985-09-25"),
    ],
)
def test_a_birth_date_beside_a_name_is_hidden_without_a_birth_word(
    pii: PresidioPII, text: str, name: str, born: str
) -> None:
    found = {(f.entity_type, text[f.start : f.end]) for f in pii.find(text)}
    assert {("PERSON", name), ("DATE_OF_BIRTH", born)} <= found


def test_a_recent_date_after_a_name_is_not_a_birth_date(pii: PresidioPII) -> None:
    text = f"Signed: Ann Keller, 12 May {datetime.date.today().year}."
    assert "DATE_OF_BIRTH" not in {f.entity_type for f in pii.find(text)}


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Deliver to Suite 12 400 Harbor Bypass please.", "Suite 12 400 Harbor Bypass"),
        ("My address is Calle Mayor N° 12, 28013 Madrid.", "Calle Mayor N° 12, 28013 Madrid"),
        ("Ship it to Quadra Norte, 57, 70000 Brasília.", "Quadra Norte, 57, 70000 Brasília"),
        ("He moved to Ady endre utca 12., 1051 Budapest.", "Ady endre utca 12., 1051 Budapest"),
        ("The flat is at 625 Patricia Curve, sadly.", "625 Patricia Curve"),
    ],
)
def test_street_addresses_in_more_forms_are_hidden_whole(
    pii: PresidioPII, text: str, address: str
) -> None:
    found = [(f.entity_type, text[f.start : f.end]) for f in pii.find(text)]
    assert found == [("LOCATION", address)]


def test_a_number_with_a_country_code_is_a_phone_even_at_an_unexpected_length(
    pii: PresidioPII,
) -> None:
    text = "Call +54 9 3640 8192 after five."
    found = [(f.entity_type, text[f.start : f.end]) for f in pii.find(text)]
    assert found == [("PHONE_NUMBER", "+54 9 3640 8192")]


def test_spacy_runs_its_entity_recognizer_alone(pii: PresidioPII) -> None:
    # The tagger, parser, lemmatizer and their shared vectors took 40 % of the time and
    # nothing the guard reads needs them (guardrails/pii.py).
    assert pii._analyzer is not None
    assert pii._analyzer.nlp_engine.nlp["en"].pipe_names == ["ner"]
