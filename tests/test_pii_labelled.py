"""Identifiers given after a label are hidden, whatever their national format; unlabelled
numbers and plain words after a label are not."""

import pytest

from guardrails.pii import PresidioPII
from rag.compose import build_pii
from rag.settings import Settings


@pytest.fixture(scope="module")
def pii(provisioned: Settings) -> PresidioPII:
    return build_pii(provisioned)


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("Please wire it to bank account number 5521093384 today.", "US_BANK_NUMBER", "5521093384"),
        ("Refunds go to acct #: DE-4471-0099 by Friday.", "US_BANK_NUMBER", "DE-4471-0099"),
        (
            "His driving licence no. MORGA753116SM9IJ was scanned.",
            "US_DRIVER_LICENSE",
            "MORGA753116SM9IJ",
        ),
        ("Her passport number is X4432178 and expires in May.", "US_PASSPORT", "X4432178"),
        ("The PAN card number 'QWERT1234Z' was in the log.", "IN_PAN", "QWERT1234Z"),
        # The whole number: a span over "4821" alone left eight of its twelve digits in clear.
        ("Aadhaar number: 4821 7730 1190 was typed in full.", "IN_AADHAAR", "4821 7730 1190"),
    ],
)
def test_a_labelled_identifier_is_found_with_its_own_span(
    pii: PresidioPII, text: str, entity: str, value: str
) -> None:
    found = [(f.entity_type, text[f.start : f.end]) for f in pii.find(text)]
    assert (entity, value) in found


@pytest.mark.parametrize(
    "text",
    [
        "Open your account settings and choose a new password.",
        "The licence number field must not be empty.",
        "Order 5521093384 shipped on Tuesday.",
        "Stir the sauce in a pan for ten minutes.",
    ],
)
def test_labels_without_an_identifier_and_numbers_without_a_label_pass(
    pii: PresidioPII, text: str
) -> None:
    kinds = {f.entity_type for f in pii.find(text)}
    assert not kinds & {"US_BANK_NUMBER", "US_DRIVER_LICENSE", "US_PASSPORT", "IN_PAN"}


def test_an_account_number_in_iban_form_is_reported_as_an_iban(pii: PresidioPII) -> None:
    text = "Her bank account number NL91ABNA0417164300 was on the invoice."
    assert [f.entity_type for f in pii.find(text)] == ["IBAN_CODE"]
