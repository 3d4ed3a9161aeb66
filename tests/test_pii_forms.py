"""Forms of names and addresses the PII guard hides whole, and look-alikes it leaves alone
(guardrails/pii_names.py, guardrails/pii_addresses.py). Examples written here, not drawn from
the evaluation sets."""

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


def _hidden_whole(pii: PresidioPII, text: str, value: str, entity_type: str) -> bool:
    start = text.index(value)
    end = start + len(value)
    return any(
        f.entity_type == entity_type and f.start <= start and end <= f.end for f in pii.find(text)
    )


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Jade from accounts asked me to resend the form.", "Jade"),
        ("Terence said the van is late again.", "Terence"),
        ("Tyler, from the night shift, wrote that the alarm went off.", "Tyler"),
    ],
)
def test_a_given_name_that_is_an_english_word_is_a_person_when_it_speaks(
    pii: PresidioPII, text: str, name: str
) -> None:
    assert _hidden_whole(pii, text, name, "PERSON")


@pytest.mark.parametrize(
    "text",
    [
        "The ministry on Friday said the talks would resume.",
        "Sales said the quarter closed above plan.",
        "Security asked everyone to wear their badges.",
    ],
)
def test_a_day_or_a_team_that_speaks_is_no_person(pii: PresidioPII, text: str) -> None:
    assert [f for f in pii.find(text) if f.entity_type == "PERSON"] == []


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("The courier for Via del Corso 18 rang twice.", "Via del Corso 18"),
        ("The engineer is on the way to Avinguda Diagonal 640.", "Avinguda Diagonal 640"),
        (
            "Invoice address: Mariahilfer Straße 88a/3/12, 1070 Wien.",
            "Mariahilfer Straße 88a/3/12, 1070 Wien",
        ),
        (
            "Invoice address: Bulevardul Unirii nr. 22, bl. 3, ap. 14, 030833 București.",
            "Bulevardul Unirii nr. 22, bl. 3, ap. 14, 030833 București",
        ),
        ("Invoice address: C/ Mayor, 5, 3º B, 28013 Madrid.", "C/ Mayor, 5, 3º B, 28013 Madrid"),
        (
            "My new address is Largo do Carmo, Springfield, IL 62704.",
            "Largo do Carmo, Springfield, IL 62704",
        ),
        # Argentina: the CPA (province letter, four digits, three letters) and Faker's eight
        # digits.
        (
            "Send it to Av. Corrientes 1234, C1043AAZ Buenos Aires.",
            "Av. Corrientes 1234, C1043AAZ Buenos Aires",
        ),
        ("She moved to 50001234 Villa María last spring.", "50001234 Villa María"),
    ],
)
def test_european_and_latin_american_address_forms_are_hidden_whole(
    pii: PresidioPII, text: str, address: str
) -> None:
    assert _hidden_whole(pii, text, address, "LOCATION")


@pytest.mark.parametrize(
    "text",
    [
        "Use Via Email for the form, then Room 4 for the interview.",
        "Place an order before noon, the Planning team said.",
        "Ask whether 12345678 Printers still need toner.",
        "Batch 20250101 Results were uploaded at noon.",
    ],
)
def test_prefix_words_and_long_numbers_alone_are_no_address(pii: PresidioPII, text: str) -> None:
    assert [f for f in pii.find(text) if f.entity_type == "LOCATION"] == []


def test_a_postcode_before_a_town_is_an_address_without_an_address_word(
    pii: PresidioPII,
) -> None:
    text = "We met her in 1010 Wien to sign the lease."
    assert _hidden_whole(pii, text, "1010 Wien", "LOCATION")


def test_town_names_come_from_geonames_without_english_words(pii: PresidioPII) -> None:
    names = pii.places.town_names(pii.english_words)
    assert {"Wien", "Košice", "Chilecito", "Zürich", "Trofa"} <= names
    # Towns too, but after a number more often a room, a chapter or a version.
    assert not {"Reading", "Nice", "Split", "Mobile"} & names


@pytest.mark.parametrize(
    "text",
    [
        "© 2021 Bergen Software AS, all rights reserved.",  # a year, not a postcode
        "Read chapter 12 Bremen before the tour.",  # too few digits for a postcode
        "Room 4012 Reading list is on the shelf.",  # an English word, not a town
    ],
)
def test_a_number_before_a_town_name_alone_is_no_address(pii: PresidioPII, text: str) -> None:
    from guardrails.pii_addresses import AddressRecognizer

    recognizer = AddressRecognizer(pii.places.town_names(pii.english_words))
    assert recognizer.analyze(text, ["LOCATION"]) == []


def test_a_street_without_a_number_does_not_hide_the_address_beside_it(pii: PresidioPII) -> None:
    # The rule that kept a street without a number from promoting itself once dropped every
    # weak part it was joined to: house number and postcode were left in the text.
    text = "Send it to Calle Mayor, Dolac 575, 68282 Ilok please."
    assert _hidden_whole(pii, text, "Dolac 575, 68282 Ilok", "LOCATION")


def test_a_models_folder_that_cannot_be_written_still_gets_the_towns(
    provisioned: Settings, tmp_path
) -> None:
    from rag.models import resolve_spacy_package

    # A file where the folder should be: the lookup can be neither written nor read.
    blocked = tmp_path / "models"
    blocked.write_text("not a folder")
    package = resolve_spacy_package(provisioned.guards.pii.spacy_model)
    assert package is not None
    guard = PresidioPII(
        package,
        provisioned.guards.pii.entities,
        provisioned.guards.pii.score_threshold,
        places_lookup=blocked / "places-lookup-v1.tsv.gz",
    )
    assert guard.available
    assert _hidden_whole(
        guard, "We met her in 1010 Wien to sign the lease.", "1010 Wien", "LOCATION"
    )
