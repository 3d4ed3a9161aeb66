"""PII guard quality: precision/recall per type (span overlap), the share of clean texts touched,
and latency on 1,000-character questions, on sets generated here with Faker's locales.

Two generated sets that share no sentence template, no seed and part of their locales: `tune`
(what recognizers were adjusted on) and `held` (never looked at while tuning), so a score on
`held` says how the guard does on forms it was not fitted to.
Run: `python -m evals.pii [DATA_DIR]` (DATA_DIR holding pii_dev.jsonl, by default
../shared/eval-data).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evals.progress import Advance
from evals.scoring import precision_recall
from guardrails.pii import PresidioPII

Split = Literal["tune", "held"]


def _overlaps(start: int, end: int, other_start: int, other_end: int) -> bool:
    return start < other_end and other_start < end


def pii_scores(
    guard: PresidioPII, rows: Iterable[dict[str, Any]], advance: Advance | None = None
) -> dict[str, dict[str, float]]:
    """Per entity type, and `micro` over all of them: a prediction is right when it overlaps a
    gold span of its type; a gold span is found when a prediction of its type overlaps it."""
    true_pos: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    gold_found: Counter[str] = Counter()
    gold: Counter[str] = Counter()
    for row in rows:
        findings = guard.find(row["text"])
        spans = row["entities"]
        for entity in spans:
            gold[entity["type"]] += 1
            if any(
                f.entity_type == entity["type"]
                and _overlaps(f.start, f.end, entity["start"], entity["end"])
                for f in findings
            ):
                gold_found[entity["type"]] += 1
        for f in findings:
            predicted[f.entity_type] += 1
            if any(
                e["type"] == f.entity_type and _overlaps(f.start, f.end, e["start"], e["end"])
                for e in spans
            ):
                true_pos[f.entity_type] += 1
        if advance is not None:
            advance()
    scores: dict[str, dict[str, float]] = {}
    for entity_type in sorted(set(gold) | set(predicted)):
        pr = precision_recall(
            true_pos[entity_type],
            predicted[entity_type],
            gold_found[entity_type],
            gold[entity_type],
        )
        scores[entity_type] = {
            "precision": round(pr.precision, 4),
            "recall": round(pr.recall, 4),
            "f1": round(pr.f1, 4),
            "gold": gold[entity_type],
            "predicted": predicted[entity_type],
        }
    # Micro scores count only types the set labels: a type with no gold rows (Presidio's
    # DATE_TIME, say) has no right answers to be measured against.
    labelled = [t for t in scores if gold[t]]
    micro = precision_recall(
        sum(true_pos[t] for t in labelled),
        sum(predicted[t] for t in labelled),
        sum(gold_found[t] for t in labelled),
        sum(gold[t] for t in labelled),
    )
    scores["micro"] = {
        "precision": round(micro.precision, 4),
        "recall": round(micro.recall, 4),
        "f1": round(micro.f1, 4),
    }
    return scores


def exposure(guard: PresidioPII, rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """What the model would see: the share of gold spans hidden under any type, and the share
    of texts without personal data where the guard changed anything (lower is better; kept
    out of `pii_scores`, whose metrics the regression gate reads as higher-is-better)."""
    gold = hidden = clean = touched = 0
    for row in rows:
        findings = guard.find(row["text"])
        if not row["entities"] and not row.get("unscored_entities"):
            clean += 1
            touched += bool(findings)
        for e in row["entities"]:
            gold += 1
            hidden += any(_overlaps(f.start, f.end, e["start"], e["end"]) for f in findings)
    return {
        "hidden_any_type": round(hidden / gold, 4) if gold else 0.0,
        "clean_touched": round(touched / clean, 4) if clean else 0.0,
        "clean_texts": clean,
    }


# ---------------------------------------------------------------- generated sets

# Locales whose names, phone numbers and addresses each set draws from. `held` keeps some of
# `tune`'s and adds its own, so it also measures forms from places not tuned on.
_LOCALES: dict[Split, tuple[str, ...]] = {
    "tune": (
        "en_US",
        "en_GB",
        "sv_SE",
        "da_DK",
        "no_NO",
        "fi_FI",
        "nl_NL",
        "fr_FR",
        "de_DE",
        "en_AU",
        "cs_CZ",
        "pl_PL",
        "hu_HU",
        # Places `held` does not draw from, so `tune` also holds Romance, Slovene and Dutch
        # Belgian forms without borrowing `held`'s own locales.
        "nl_BE",
        "fr_CH",
        "pt_BR",
        "es_AR",
        "sl_SI",
        "en_NZ",
    ),
    "held": (
        "en_US",
        "en_GB",
        "en_CA",
        "sv_SE",
        "da_DK",
        "fi_FI",
        "fr_FR",
        "de_AT",
        "de_CH",
        "sk_SK",
        "hr_HR",
        "pt_PT",
        "ro_RO",
        "it_IT",
        "es_ES",
    ),
}
# Faker's en_IE and es_MX phone numbers are US-shaped; these locales write their own.
_PHONE_LOCALES = frozenset(
    {
        "en_US",
        "en_GB",
        "en_CA",
        "sv_SE",
        "da_DK",
        "no_NO",
        "fi_FI",
        "nl_NL",
        "fr_FR",
        "de_DE",
        "de_AT",
        "de_CH",
        "en_AU",
        "cs_CZ",
        "pl_PL",
        "hu_HU",
        "sk_SK",
        "hr_HR",
        "pt_PT",
        "ro_RO",
        "it_IT",
        "es_ES",
        "nl_BE",
        "fr_CH",
        "pt_BR",
        "es_AR",
        "sl_SI",
        "en_NZ",
    }
)
# Romanised names of traditions Faker writes only in their own script.
_ROMANISED = {
    "tune": (
        ("Ahmed", "Al-Sayed"),
        ("Fatima", "Haddad"),
        ("Omar", "Khalil"),
        ("Siobhan", "Ní Bhriain"),
        ("Zhang", "Wei"),
        ("Olena", "Kovalenko"),
    ),
    "held": (
        ("Youssef", "El-Amin"),
        ("Layla", "Mansour"),
        ("Khalid", "Rahman"),
        ("Aoife", "Ó Súilleabháin"),
        ("Liu", "Yang"),
        ("Dmytro", "Shevchenko"),
    ),
}

# Sentences with slots; `tune` and `held` share none, so a template fitted on one says nothing
# about the other. Slots: {PERSON} {FIRST} {PHONE} {STREET} {CITYLINE} {POBOX} {MILITARY}
# {DOB} {NINO} {EMAIL}.
_TEMPLATES: dict[Split, tuple[str, ...]] = {
    "tune": (
        "Hi, this is {PERSON}. Please call me back on {PHONE} about my refund.",
        "My new address is {STREET}, {CITYLINE}. Can you update the delivery?",
        "Send the replacement to {PERSON}, {STREET}, {CITYLINE}.",
        "Reach me at {PHONE} or {EMAIL} after five.",
        "{PERSON} (born {DOB}) asked whether the policy covers her trip.",
        "Date of birth: {DOB}. National Insurance number {NINO}.",
        "Please forward the letter to {POBOX}.",
        "Ship it to {MILITARY}, the unit cannot receive couriers.",
        "Thanks {FIRST}, I will ring {PHONE} tomorrow.",
        "Customer {PERSON} lives at {STREET}; her mobile is {PHONE}.",
        "Our contact, {PERSON}, moved to {CITYLINE} last spring.",
        "I was born on {DOB} and my NI number is {NINO}.",
        # A birth date beside the name, with no birth word: the way forms and lists write it.
        "Policyholder: {PERSON}, {DOB}, {STREET}, {CITYLINE}.",
        "Please add {PERSON} [{DOB}] to the family membership.",
        "Passenger {PERSON} - {DOB} - needs assistance at boarding.",
        "{FIRST} from accounts asked me to call {PHONE} before noon.",
        "Ask {PERSON} whether {STREET} still has visitor parking.",
    ),
    "held": (
        "Could {PERSON} get a callback at {PHONE}? The order never arrived.",
        "Invoice address: {STREET}, {CITYLINE}.",
        "{FIRST} said the parcel for {STREET} was left outside.",
        "Phone {PHONE}, email {EMAIL}, name {PERSON}.",
        "My DOB is {DOB}, can you confirm my account?",
        "Dear {PERSON}, we have noted your NINO {NINO}.",
        "Mail can go to {POBOX} until we move.",
        "He is deployed, so use {MILITARY} for anything urgent.",
        "Please text {PHONE} when the engineer is on the way to {STREET}.",
        "{PERSON} ({DOB}) is the second driver on the policy.",
        "We met {PERSON} in {CITYLINE} to sign the lease.",
        "Kind regards, {PERSON}, {STREET}, {CITYLINE}, tel. {PHONE}",
    ),
}
# Texts with nothing personal that still look like it: capitalised words, numbers, dates. No
# place names: the guard hides cities as LOCATION by design, so a text naming one is not clean.
_CLEAN: dict[Split, tuple[str, ...]] = {
    "tune": (
        "How many days of annual leave do I get after five years?",
        "Order 5521093384 shipped on Tuesday from the North Warehouse.",
        "Who approves an expense above 2,500 euros in the Finance team?",
        "The Security Policy requires a 12-character password since March 2024.",
        "Can I work remotely from home for two weeks in August?",
        "Invoice INV-2024-0087 totals 1,280.50 EUR including VAT at 21 %.",
        "Is the Lantern Pro warranty two years or three in the European Union?",
        "The meeting moved to Room 4.12 on the third floor at 14:30.",
        "Version 3.8.18 of the parser fixed bug 44721 reported by Support.",
        "Does the Travel Policy cover a train to the Annual Summit?",
        "What did the Board decide about the H2 budget for Engineering?",
        "Is the Q1 2025 all-hands recorded, and where is the slide deck?",
        "Does Procurement need three quotes for purchases over 10,000 EUR?",
        "Can HR confirm whether parental leave is 16 or 20 weeks?",
        "The Customer Success dashboard in Salesforce stopped updating on Monday.",
        "Who owns the Data Retention Standard, Compliance or IT?",
        "Reset my VPN token; the Okta prompt keeps failing since the 2.3 update.",
        "Is lunch reimbursed during the Sales Kickoff in January?",
        "The Platform team deprecated API v1 on 30 June 2025.",
        "Which Slack channel handles Facilities requests for Building C?",
        "Our SLA promises a first response within 4 hours for Priority 1 tickets.",
        "How do I request a MacBook Pro upgrade through the Service Portal?",
        "Is Good Friday a public holiday for the Operations staff?",
        "PO number 4500123987 is waiting for approval by Accounts Payable.",
        "The FY2024 audit found two issues in Treasury controls.",
        "Are contractors covered by the Health and Safety induction?",
        "Release 5.2.1 of the Mobile App ships next Thursday after QA sign-off.",
        "Does the Learning Budget cover an AWS Solutions Architect exam?",
        "The Innovation Lab on Level 6 is closed for maintenance this week.",
        "Who should I contact in Payroll about the Bonus Scheme?",
        "Can Customer Support issue refunds above 500 dollars without a Manager?",
        "Zoom or Teams for the Quarterly Business Review?",
        "Where are the Brand Guidelines and the Logo Pack stored?",
        "Our Net Promoter Score rose to 47 in Wave 3 of the survey.",
        "The Risk Committee meets every second Wednesday at 15:00.",
        "How many sick days can I take before a Fit Note is needed?",
        "Is Project Falcon still on hold until the Steering Group approves it?",
        "SKU 77-4410-B is out of stock in the Online Shop.",
        "The Works Council must approve changes to the On-Call Rota.",
        "What does Tier 2 Support do when a Severity High incident is escalated?",
    ),
    "held": (
        "When is salary paid in December, before or after Christmas?",
        "Ticket 88213-77 was closed by the Help Desk on Friday.",
        "The Head Office opens at 8:00 and the Service Desk at 9:00.",
        "What is the minimum password length for Admin accounts?",
        "Please book Meeting Room Atlas for 10 people on 12 May.",
        "The Q3 report shows revenue of 4,512,000 USD, up 7.5 percent.",
        "Can the Marketing team expense a Spotify subscription?",
        "Flight KL 1234 leaves at 07:45 from Gate D7, Terminal 2.",
        "Our Code of Conduct was updated on 2025-01-15 by the Legal team.",
        "How long is the warranty on a Garden Lantern bought online?",
    ),
}


@dataclass(frozen=True)
class _Value:
    entity_type: str
    text: str


class _Fill:
    """Draws each slot's value from a seeded Faker of one locale."""

    def __init__(self, split: Split, rng: random.Random) -> None:
        from faker import Faker

        self.rng = rng
        self.split = split
        self.fakers = {loc: Faker(loc) for loc in _LOCALES[split]}
        for i, fake in enumerate(self.fakers.values()):
            fake.seed_instance(rng.randrange(1 << 30) + i)

    def _fake(self, phones: bool = False) -> Any:
        locales = [loc for loc in self.fakers if not phones or loc in _PHONE_LOCALES]
        return self.fakers[self.rng.choice(locales)]

    def person(self) -> _Value:
        if self.rng.random() < 0.2:
            first, last = self.rng.choice(_ROMANISED[self.split])
            return _Value("PERSON", f"{first} {last}")
        fake = self._fake()
        return _Value("PERSON", f"{fake.first_name()} {fake.last_name()}")

    def first(self) -> _Value:
        return _Value("PERSON", self._fake().first_name())

    def phone(self) -> _Value:
        return _Value("PHONE_NUMBER", self._fake(phones=True).phone_number())

    def street(self) -> _Value:
        fake = self._fake()
        street = fake.street_address()
        if fake.locales[0] in ("en_US", "en_CA") and self.rng.random() < 0.4:
            street = f"{street} {fake.secondary_address()}"
        return _Value("LOCATION", street.replace("\n", ", "))

    def cityline(self) -> _Value:
        fake = self._fake()
        if fake.locales[0] == "en_US":
            return _Value("LOCATION", f"{fake.city()}, {fake.state_abbr()} {fake.postcode()}")
        if fake.locales[0] == "en_CA":
            return _Value("LOCATION", f"{fake.city()}, {fake.province_abbr()} {fake.postcode()}")
        return _Value("LOCATION", f"{fake.postcode()} {fake.city()}")

    def pobox(self) -> _Value:
        fake = self.fakers["en_US"]
        box = self.rng.choice(("PO Box", "P.O. Box", "Post Office Box"))
        return _Value(
            "LOCATION",
            f"{box} {self.rng.randint(10, 99999)}, {fake.city()}, {fake.state_abbr()} "
            f"{fake.postcode()}",
        )

    def military(self) -> _Value:
        fake = self.fakers["en_US"]
        kind = self.rng.choice(("apo", "dpo", "ship"))
        if kind == "apo":
            text = f"{fake.military_apo()}, APO {fake.military_state()} {fake.postcode()}"
        elif kind == "dpo":
            text = f"{fake.military_dpo()}, DPO {fake.military_state()} {fake.postcode()}"
        else:
            text = f"{fake.military_ship()} {fake.last_name()}, FPO {fake.military_state()} "
            text += fake.postcode()
        return _Value("LOCATION", text)

    def dob(self) -> _Value:
        born = self._fake().date_of_birth(minimum_age=18, maximum_age=90)
        shape = self.rng.choice(("%d/%m/%Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y", "%m/%d/%Y"))
        return _Value("DATE_OF_BIRTH", born.strftime(shape))

    def nino(self) -> _Value:
        # Faker's en_GB `ssn` is always the `ZZ … T` test form; real ones look like this.
        letters = "ABCEGHJKLMNPRSTWXYZ"
        prefix = self.rng.choice(letters[:-1]) + self.rng.choice(letters.replace("O", ""))
        digits = [f"{self.rng.randrange(100):02d}" for _ in range(3)]
        suffix = self.rng.choice("ABCD")
        if self.rng.random() < 0.5:
            return _Value("UK_NINO", f"{prefix} {' '.join(digits)} {suffix}")
        return _Value("UK_NINO", f"{prefix}{''.join(digits)}{suffix}")

    def email(self) -> _Value:
        return _Value("EMAIL_ADDRESS", self._fake().email())


_SLOTS = {
    "PERSON": _Fill.person,
    "FIRST": _Fill.first,
    "PHONE": _Fill.phone,
    "STREET": _Fill.street,
    "CITYLINE": _Fill.cityline,
    "POBOX": _Fill.pobox,
    "MILITARY": _Fill.military,
    "DOB": _Fill.dob,
    "NINO": _Fill.nino,
    "EMAIL": _Fill.email,
}
_SEEDS: dict[Split, int] = {"tune": 15, "held": 1015}


def generated_rows(split: Split, rows: int = 300, clean_share: float = 0.2) -> list[dict[str, Any]]:
    """`rows` labelled texts of one split, seeded: the same call gives the same rows."""
    import re

    rng = random.Random(_SEEDS[split])
    fill = _Fill(split, rng)
    out: list[dict[str, Any]] = []
    for i in range(rows):
        if rng.random() < clean_share:
            out.append({"id": f"{split}-{i}", "text": rng.choice(_CLEAN[split]), "entities": []})
            continue
        template = rng.choice(_TEMPLATES[split])
        text, entities, cursor = "", [], 0
        for slot in re.finditer(r"\{([A-Z]+)\}", template):
            text += template[cursor : slot.start()]
            value = _SLOTS[slot.group(1)](fill)
            entities.append(
                {
                    "type": value.entity_type,
                    "start": len(text),
                    "end": len(text) + len(value.text),
                    "value": value.text,
                }
            )
            text += value.text
            cursor = slot.end()
        text += template[cursor:]
        out.append({"id": f"{split}-{i}", "text": text, "entities": entities})
    return out


def long_questions(count: int, chars: int = 1000) -> list[str]:
    """Questions of about `chars` characters built from held-out rows, PII and clean mixed."""
    rows = generated_rows("held", rows=count * 20)
    texts, current = [], ""
    for row in rows:
        current = f"{current} {row['text']}".strip()
        if len(current) >= chars:
            texts.append(current[:chars])
            current = ""
            if len(texts) == count:
                break
    return texts


def latency_ms(guard: PresidioPII, texts: list[str]) -> dict[str, float]:
    # The first call loads spaCy's pipes: warmed on a text that is not timed.
    guard.check_sync("Warm-up: Ada Lovelace, 12 Rue de Rivoli, 75001 Paris, +33 1 23 45 67 89.")
    timings = []
    for text in texts:
        started = time.perf_counter()
        guard.check_sync(text)
        timings.append((time.perf_counter() - started) * 1000)
    ordered = sorted(timings)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        "n": len(ordered),
        "chars": round(statistics.mean(len(t) for t in texts)),
    }


def main(argv: list[str]) -> None:
    from evals.guards import read_jsonl
    from rag.compose import build_pii
    from rag.settings import load_settings

    data = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "shared" / "eval-data"
    with tempfile.TemporaryDirectory() as data_dir:
        guard = build_pii(load_settings(None, data_dir=Path(data_dir)))
        sets = {"tune": generated_rows("tune"), "held": generated_rows("held")}
        if (data / "pii_dev.jsonl").exists():
            sets["pii_dev"] = read_jsonl(data / "pii_dev.jsonl")
        report: dict[str, Any] = {
            name: pii_scores(guard, rows) | {"exposure": exposure(guard, rows)}
            for name, rows in sets.items()
        }
        report["latency_1000_chars_ms"] = latency_ms(guard, long_questions(100))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
