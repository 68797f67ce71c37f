"""Plausible invented country names, generated deterministically and checked not to be real."""

from __future__ import annotations

import random

from service.datasets.countries import known_place_names, normalize

_ONSETS = ("b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io")
_CODAS = ("", "", "n", "r", "l", "s", "th", "nd")
_SUFFIXES = ("ia", "ania", "ova", "stan", "land", "aria", "ica", "onia", "esia", "ador")


def _name(rng: random.Random) -> str:
    syllables = rng.choice((1, 2, 2))
    stem = "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
    )
    return (stem + rng.choice(_SUFFIXES)).capitalize()


def invented_countries(n: int, seed: int) -> list[str]:
    """`n` distinct invented country names for this seed; none is a real country or city."""
    rng = random.Random(f"invented-countries:{seed}")
    real = known_place_names()
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = _name(rng)
        key = normalize(name)
        if key in real or key in seen or not 6 <= len(name) <= 14:
            continue
        seen.add(key)
        names.append(name)
    return names
