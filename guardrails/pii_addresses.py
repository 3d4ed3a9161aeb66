"""Postal addresses as LOCATION: street lines in US/UK form (`221B Baker Street`, `786 Timothy
Summit Suite 625`) and European forms (`Gunhildsvej 174`, `Mosoni utca 215`, `12 Rue de Rivoli`,
`Strada Mocanu Nr. 756`), PO boxes, military APO/FPO/DPO lines, and postcodes beside a city
(`75001 Paris`, `NW1 6XE`, `Springfield, IL 62704`).

spaCy's small English model tags a city but not the street, number or postcode around it. Each
part is found on its own; parts that follow one another (`, ` between them) become one span, so
the whole address is hidden behind one placeholder, not only the city in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult

# Upper-case letters of the Latin scripts (A-Z, accented, Central European): Python's `re` has
# no \p{Lu}.
_UP = "A-Z" + "".join(chr(c) for c in range(0x00C0, 0x0250) if chr(c).isupper())
_LOW = "a-zß" + "".join(chr(c) for c in range(0x00C0, 0x0250) if chr(c).islower())
# A capitalised word: Baker, O'Connell, Saint-Denis, St. (a full stop only after a short
# abbreviation, so "Paris. Thanks" ends at Paris).
_CAP = rf"(?:[{_UP}][{_LOW}]{{0,2}}\.|[{_UP}][{_LOW}{_UP}'’\-]*)"
# 221B, 12-14, 7/3, 88a/3/12 (Vienna: house, stair, flat); not 4.12
_NUM = r"\d{1,5}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?){0,2}(?![.,:]\d)"

# Street types written as their own word after the name, English-speaking countries.
_EN_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|Blvd|Court|Ct|Place|Pl|Square|Sq"
    "|Terrace|Terr?|Way|Close|Crescent|Cres|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Trail|Trl|Row"
    "|Mews|Gardens|Gdns|Grove|Hill|Park|Walk|View|Green|Rise|Vale|Wharf|Quay|Heights|Summit"
    "|Ridge|Mills?|Burgs?|Crossing|Loop|Pike|Plaza|Point|Port|Ranch|Run|Springs?|Station"
    "|Turnpike|Valley|Village|Villes?|Vista|Alley|Bridge|Brooks?|Camp|Canyon|Cape|Causeway"
    "|Center|Centre|Commons?|Corners?|Creek|Crest|Dale|Dam|Divide|Estates?|Expressway|Expy"
    "|Extensions?|Falls|Ferry|Fields?|Flats?|Fords?|Forest|Forges?|Forks?|Fort|Freeway|Fwy"
    "|Gateway|Glens?|Harbou?rs?|Haven|Hollow|Inlet|Island|Junctions?|Keys?|Knolls?|Lakes?"
    "|Landing|Lights?|Lodge|Manors?|Meadows?|Motorway|Mount|Mountains?|Orchard|Oval|Pass"
    "|Path|Pines?|Plains?|Prairie|Radial|Ramp|Rapids?|Rest|Route|Shoals?|Shores?|Skyway|Spur"
    "|Streams?|Throughway|Trace|Track|Tunnel|Underpass|Unions?|Viaduct|Views|Wells?"
    # The rest of the USPS street suffixes (Publication 28), and Australian and British types.
    "|Allee|Annex|Arcade|Bayou|Beach|Bend|Bluffs?|Bottom|Branch|Bypass|Byp|Centers|Circles"
    "|Cliffs?|Club|Course|Courts|Coves?|Crossroads?|Curve|Drives|Fall|Garden|Greens|Groves"
    "|Hills|Islands|Isle|Land|Loaf|Locks?|Mall|Mission|Neck|Overpass|Parks|Parkways|Passage"
    "|Points|Ports|Ridges|River|Roads|Rue|Spurs|Squares|Stravenue|Streets|Trafficway|Trailer"
    "|Valleys|Villages|Walks|Wall|Ways|Parade|Esplanade|Circuit|Promenade|Glade|Grange"
    "|Approach|Dell|Thoroughfare"
)
_SECONDARY = (
    r"(?:,?\s(?:Suite|Ste\.?|Apt\.?|Apartment|Unit|Flat|Floor|Fl\.|Room|Rm\.?|Bldg\.?"
    r"|Building|#)\s?#?[A-Za-z]?\d{1,5}[A-Za-z]?)"
)
# Street types that end the street's own name (compounds) or follow it, northern and central
# Europe: Röhrichtweg, Gunhildsvej, Idrottsgränd, Ilotulitustie, Silkebaan, Mosoni utca.
_EU_SUFFIXES = (
    "straße|strasse|str\\.|weg|gasse|platz|allee|ring|damm|ufer|steig|pfad|chaussee|markt"
    "|vej|vænget|gade|stræde|allé|plads|torv|gata|gatan|vägen|väg|gränd|stigen|backen|torget"
    "|veien|vegen|gaten|tie|katu|polku|kuja|kaari|raitti|straat|laan|gracht|plein|kade|dreef"
    "|singel|dijk|steeg|utca|út|útja|tér|körút|köz|sor|ulice|náměstí|třída|nábřeží|ulica"
    "|løkka|løkke|svingen|bakken|stien|haugen|åsen|tunet|plassen|grenda|kroken|skogen"
    "|aleja|cesta"
)
# Street types written as a word of their own that no English sentence uses ("ring", "markt"
# and "sor" are left out): only these may follow a lower-case word.
_EU_WORD_TYPES = "utca|út|útja|tér|körút|ulice|ulica|cesta|vej|gade|gata|gatan|straat|laan|katu"
# Street types written before the name: Romance languages, Polish and Czech abbreviations.
# Words that are also English ("via", "place", "route") count only capitalised: "Via Roma 10"
# but not "via Email 24".
_PREFIX_TYPES = (
    "(?i:rue|avenue|av\\.|boulevard|bd\\.?|chemin|allée|impasse|quai|viale"
    "|piazza|piazzale|corso|vicolo|contrada|calle|avenida|avda\\.|paseo|camino"
    "|carrer|ronda|travesía|pasaje|rua|travessa|alameda|praça|estrada|strada|bulevardul|calea"
    "|aleea|splaiul|str\\.|ul\\.|ulica|al\\.|aleja|pl\\.|plac|os\\.|nám\\.|náměstí|trg"
    # Catalan.
    "|avinguda|passeig|plaça|travessera)"
    # Spanish `C/ Mayor` (calle).
    "|C/"
    "|Place|Via|Route|Cours|Largo|Plaza|Ronda|Intrarea|Bulevardul|Soseaua|Calea|Strada"
    # Brazilian and Portuguese kinds of street (logradouro), Czech `U` ("by the") and `Na`.
    "|Quadra|Praia|Campo|Lago|Lagoa|Área|Colônia|Vila|Jardim|Parque|Rodovia|Conjunto|Setor"
    "|Fazenda|Chácara|Sítio|Ladeira|Viela|Vereda|Núcleo|Recanto|Trecho|Residencial"
    "|Condomínio|Esplanada|Viaduto|U|Na"
)
_PARTICLE = (
    r"(?:de|du|des|la|le|les|di|del|della|dei|da|do|dos|das|el|los|las|d'|l'|e|y|i|na|am|an"
    r"|der|im|bei|sur|sous|en|upon|on)"
)

_UNIT_FIRST = (
    r"\b(?:Suite|Ste\.?|Apt\.?|Apartment|Unit|Flat|Studio|Room|Rm\.?)\s?#?[A-Za-z]?\d{1,5}[A-Za-z]?"
)
_STREET_EN = re.compile(
    rf"\b{_NUM},?\s(?:{_CAP}\s){{0,3}}(?:{_EN_TYPES})\b\.?(?:\s(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    rf"{_SECONDARY}?"
    # The unit written first, British and Australian style, the house number then optional.
    rf"|{_UNIT_FIRST},?\s(?:{_NUM},?\s)?(?:{_CAP}\s){{0,3}}(?:{_EN_TYPES})\b\.?"
)
_STREET_EU = re.compile(
    # `Willibald-Baum-Ring`: a hyphenated compound capitalises its last part.
    rf"\b(?:{_CAP}\s){{0,2}}[{_UP}][\w'’.\-]*?(?:{_EU_SUFFIXES}|-(?i:{_EU_SUFFIXES}))\.?"
    # Not a year: `Spring 2025` ends in `ring` too.
    rf"(?:\s(?:{_EU_SUFFIXES})\.?)?,?\s(?:Nr\.?\s|nr\.?\s|č\.\s?)?(?!(?:19|20)\d\d\b){_NUM}\b\.?"
    # `Mosoni utca 215`, and `Ady endre utca 156.` written with a lower-case given name.
    rf"|\b(?:{_CAP}\s){{1,2}}(?i:{_EU_SUFFIXES})\.?\s{_NUM}\b\.?"
    rf"|\b{_CAP}\s[{_LOW}]{{2,}}\s(?:{_EU_WORD_TYPES})\.?\s{_NUM}\b\.?"
)
_STREET_PREFIXED = re.compile(
    # A particle ends at its word (`del`, not `de` of it), or at its apostrophe (`d'Italia`).
    rf"(?:\b{_NUM},?\s)?\b(?:{_PREFIX_TYPES})"
    rf"(?:\s(?:{_PARTICLE}(?:(?<=')|(?![^\W\d_]))|{_CAP}(?![º°]))){{1,5}}"
    rf"(?:,?\s(?:[nN]r\.?\s|[nN][º°]\s?|[nN]o\.?\s|n\.\s?)?{_NUM}\b)?"
    # The floor and door or the block and flat after it: `3º B`, `4º Esq.`, `bl. 3, ap. 14`.
    rf"(?:,?\s(?:\d{{1,2}}[º°ª]\s?(?:[A-Z]\b|Esq\.?|Dto\.?|Dta\.?|Izq\.?|Dcha\.?|Dr\.?)?"
    rf"|(?:bl|sc|et|ap|apt)\.\s?\w{{1,4}}\b))*"
)
_PO_BOX = re.compile(
    r"\b(?:P\.?\s?O\.?\s?Box|Post\s+Office\s+Box|Postbox|Postfach|Boîte\s+postale|B\.?P\.|"
    r"Apartado(?:\s+de\s+correos)?|Box)\s?#?\d{1,6}\b"
)
_MILITARY = re.compile(
    r"\b(?:PSC|CMR|Unit)\s\d{2,5},?\s+Box\s\d{1,5}\b"
    rf"|\b(?:USNS|USNV|USS|USCGC)\s{_CAP}(?:\s{_CAP})?"
    r"|\b(?:APO|FPO|DPO)\s(?:AA|AE|AP)\s\d{5}(?:-\d{4})?\b"
)
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH"
    "|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP"
    "|AB|BC|MB|NB|NL|NS|NT|NU|ON|PE|QC|SK|YT"
)
# "Springfield, IL 62704", "Lake Paulahaven, ON V7K 3R6".
_CITY_STATE_ZIP = re.compile(
    rf"\b(?:{_CAP}\s){{0,3}}{_CAP},\s(?:{_STATES})\s(?:\d{{5}}(?:-\d{{4}})?|[A-Z]\d[A-Z]\s?\d[A-Z]\d)\b"
)
# UK, Canadian and Irish postcodes: shapes distinct enough to stand alone.
# A town in front is part of it: "London NW1 6XE".
_POSTCODE_ALONE = re.compile(
    rf"(?:\b{_CAP}\s){{0,2}}"
    r"\b(?:[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}"
    r"|[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z]\s\d[ABCEGHJ-NPRSTV-Z]\d)\b"
)
# A numeric postcode and the place after it: 75001 Paris, 277 83 Hrochův Týnec, 71-239
# Wodzisław Śląski, H-9124 Egyházasberény, 3330-252 Trofa, 6241 UT Utrecht, D67 0P01 Dublin,
# 8320000 Santiago (Chile: seven digits), C1425DKE Buenos Aires (Argentina's CPA: a province
# letter, four digits, three letters), 94102976 Chilecito (Faker's es_AR: eight digits).
_POSTCODE_CITY = re.compile(
    rf"\b(?P<code>(?:[A-Z]{{1,2}}-)?(?:\d{{2,6}}(?:[ -]\d{{2,3}})?(?:\s?[A-Z]{{2}}(?=\s))?"
    rf"|\d{{7,8}}|[A-HJ-NP-Z]\d{{4}}[A-Z]{{3}}"
    rf"|[AC-FHKNPRTV-Y]\d{{2}}\s?[AC-FHKNPRTV-Y0-9]{{4}}"
    rf"|[A-Z]{{1,2}}\d[A-Z\d]?\s\d[A-Z]{{2}}|[A-Z]\d[A-Z]\s?\d[A-Z]\d))"
    rf"\s(?P<city>{_CAP}(?:(?:[ -]{_PARTICLE})?[ -]{_CAP}){{0,3}})"
)
# A capitalised street name and a house number with no street type: Dolac 575, Plzeňská 34.
# Taken only beside another address part or after an address word.
_NAME_NUMBER = re.compile(
    r"\b(?!(?:Room|Gate|Floor|Level|Chapter|Section|Page|Version|Step|Table|Figure|Item|Line"
    r"|Platform|Terminal|Building|Suite|Unit|Flight|Bus|Train|Track|Week|Day|Year|Order"
    r"|Ticket|Invoice|Case|Batch|Lot|Model|Size|Seat|Row|Box|Phase|Stage|Level)\b)"
    rf"{_CAP}(?:\s{_CAP}){{0,2}}\s{_NUM}\b(?!\s?(?:%|am|pm|:))"
)
_ADDRESS_CUE = re.compile(
    r"(?i:address|addr\.|live[sd]?\sat|living\sat|resid(?:e|es|ing)\sat|ship(?:ped)?\s(?:it\s)?to"
    r"|(?:send|sent|ship|shipped|deliver|delivered|post|mail|forward|return)\s(?:\w+\s){0,3}to"
    r"|mov(?:e|ed|ing)\sto|located\sat"
    r"|left\sat|parcel\sfor|adresse|anschrift|osoite|adres|dirección|indirizzo)"
    r"\W{0,4}$"
)

# A part that is an address on its own (a street line, a PO box, a military line, a city with
# its state and ZIP): above spaCy's 0.85 so a city inside it does not split the span.
SCORE_STRONG = 0.9
# A UK/Canadian postcode alone, or a name-and-number after an address word.
SCORE_SHAPE = 0.6
# Weak parts (a number and a capitalised word): reported only when joined to another part.
SCORE_WEAK = 0.3
_JOIN = re.compile(r"[\s,;]{0,3}(?:\n)?[\s,;]{0,2}")


class AddressRecognizer(EntityRecognizer):  # type: ignore[misc]
    """LOCATION for street addresses, PO boxes, military addresses and postcode lines."""

    def __init__(self, cities: frozenset[str] = frozenset()) -> None:
        # Town names (guardrails/pii_places.py): a postcode before one is an address line
        # with no address word in front (`We met her in 1010 Wien`).
        self._cities = cities
        super().__init__(supported_entities=["LOCATION"], name="address", supported_language="en")

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        parts: list[_Part] = []
        for pattern in (
            _STREET_EN,
            _STREET_EU,
            _STREET_PREFIXED,
            _PO_BOX,
            _MILITARY,
            _CITY_STATE_ZIP,
        ):
            for m in pattern.finditer(text):
                if pattern is _STREET_PREFIXED and not re.search(r"\d", m.group()):
                    # "via Email", "Place an order": alone, a prefixed street needs a house
                    # number; beside a city line ("Lago Porto, Barkerstad, NJ 20849") it is
                    # the street of that address.
                    parts.append(_Part(m.start(), m.end(), SCORE_WEAK, "unnumbered_street"))
                    continue
                if pattern is _PO_BOX and m.group().startswith("Box") and not _cued(text, m):
                    continue
                parts.append(_Part(m.start(), m.end(), SCORE_STRONG, "street"))
        for m in _POSTCODE_ALONE.finditer(text):
            parts.append(_Part(m.start(), m.end(), SCORE_SHAPE, "postcode"))
        for m in _POSTCODE_CITY.finditer(text):
            score = SCORE_SHAPE if _cued(text, m) or self._postcode_and_town(m) else SCORE_WEAK
            parts.append(_Part(m.start(), m.end(), score, "postcode"))
        for m in _NAME_NUMBER.finditer(text):
            score = SCORE_SHAPE if _cued(text, m) else SCORE_WEAK
            parts.append(_Part(m.start(), m.end(), score, "name_number"))
        return [
            RecognizerResult("LOCATION", start, end, score)
            for start, end, score in _joined(text, parts)
            if score >= SCORE_SHAPE
        ]

    def _postcode_and_town(self, match: re.Match[str]) -> bool:
        """A code of four digits or more (every European postcode has them; `12 Printers`
        does not) before a town's name, whole or as its first words (`1010 Wien Mitte`)."""
        code = match.group("code")
        # A year is no postcode here: `© 2022 Gogo LLC` (benign_dev.jsonl). `2000 Antwerpen`
        # still counts after an address word or beside a street.
        if sum(ch.isdigit() for ch in code) < 4 or re.fullmatch(r"(?:19|20)\d\d", code):
            return False
        words = match.group("city").split(" ")
        return any(" ".join(words[:n]) in self._cities for n in range(len(words), 0, -1))


@dataclass(frozen=True, order=True)
class _Part:
    start: int
    end: int
    score: float
    kind: str  # street, unnumbered_street, postcode or name_number


def _cued(text: str, match: re.Match[str]) -> bool:
    return bool(_ADDRESS_CUE.search(text[max(0, match.start() - 30) : match.start()]))


def _joined(text: str, parts: list[_Part]) -> list[tuple[int, int, float]]:
    """Overlapping parts, and parts with only `, ` between them, as one span. A street or a
    postcode joined to another part makes an address even when each alone was weak; names
    with numbers alone do not ("Hassan Ahmed 53, Bakhit Saad 80" are goals in a match)."""
    # (start, end, score, parts joined, parts joined other than a street without a number,
    # kinds of part)
    spans: list[tuple[int, int, float, int, int, frozenset[str]]] = []
    for part in sorted(parts):
        numbered = int(part.kind != "unnumbered_street")
        if spans:
            start, end, score, count, counted, kinds = spans[-1]
            overlapping = part.start < end
            if overlapping or _JOIN.fullmatch(text[end : part.start]):
                # Two matches of one piece of text are still one part.
                spans[-1] = (
                    start,
                    max(end, part.end),
                    max(score, part.score),
                    count if overlapping else count + 1,
                    counted if overlapping else counted + numbered,
                    kinds | {part.kind},
                )
                continue
        spans.append((part.start, part.end, part.score, 1, numbered, frozenset({part.kind})))
    out = []
    for start, end, score, count, counted, kinds in spans:
        if count > 1 and kinds != {"name_number"}:
            if score >= SCORE_SHAPE:
                score = SCORE_STRONG
            elif "," in text[start:end] and counted > 1:
                # Weak parts joined by a comma read as an address ("Dolac 575, 68282 Ilok");
                # by a space alone they may be anything ("XS 29 73 58 D" is an NI number). A
                # street without a number does not count as one of them: it joins strong
                # parts only, and must not promote itself.
                score = SCORE_SHAPE
        out.append((start, end, score))
    return out
