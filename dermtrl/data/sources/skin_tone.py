"""Skin tone as the datasets record it, normalised to Fitzpatrick types so reports can slice by it.

Every dataset encodes the Fitzpatrick type its own way: integers 1-6 (Fitzpatrick17k, PAD-UFES-20, SkinCAP),
``-1`` for "could not tell" (Fitzpatrick17k), ``FST1``..``FST6`` and ``NONE_IDENTIFIED`` (SCIN), Roman numerals,
or DDI's three groups ``12``/``34``/``56``. :func:`normalise_skin_tone` maps them all onto ``I``..``VI``, keeps
DDI's groups grouped (``I-II``, ``III-IV``, ``V-VI``: splitting them would invent precision) and says
``unknown`` for a missing or unusable value. Monk skin tone (1-10, SCIN) is another scale and is kept apart
(:func:`normalise_monk`).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from typing import Any

__all__ = ["FITZPATRICK_TYPES", "GROUPED_TYPES", "UNKNOWN", "median_type", "normalise_monk", "normalise_skin_tone"]

FITZPATRICK_TYPES: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI")
GROUPED_TYPES: dict[str, str] = {"12": "I-II", "34": "III-IV", "56": "V-VI"}
UNKNOWN = "unknown"
_MISSING = {"", "nan", "none", "null", "na", "n/a", "-1", "-1.0", "none_identified", "none_selected",
            "none_of_the_above", "unknown", "not_gradable"}
_ROMAN = re.compile(r"^(VI|IV|V|I{1,3})(?:\s*[-/]\s*(VI|IV|V|I{1,3}))?(?![A-Z])")


def _number(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def normalise_skin_tone(value: Any) -> str:
    """``I``..``VI``, a DDI group (``I-II``, ``III-IV``, ``V-VI``) or ``unknown``, from any dataset's encoding."""
    if value is None:
        return UNKNOWN
    text = str(value).strip()
    if text.lower() in _MISSING:
        return UNKNOWN
    upper = re.sub(r"^(FST|FITZPATRICK|TYPE)[\s_:-]*", "", text.upper())
    number = _number(upper)
    if number is not None:
        if 1 <= number <= 6:
            return FITZPATRICK_TYPES[number - 1]
        return GROUPED_TYPES.get(str(number), UNKNOWN)
    match = _ROMAN.match(upper)
    if match:
        first, second = match.groups()
        if second is None:
            return first
        group = f"{first}-{second}"
        return group if group in GROUPED_TYPES.values() else UNKNOWN
    return UNKNOWN


def median_type(values: Iterable[Any]) -> str:
    """The (lower) median of several raters' Fitzpatrick types, ``unknown`` when none is usable."""
    known = [FITZPATRICK_TYPES.index(t) for t in map(normalise_skin_tone, values) if t in FITZPATRICK_TYPES]
    return FITZPATRICK_TYPES[statistics.median_low(known)] if known else UNKNOWN


def normalise_monk(value: Any) -> str:
    """A Monk skin tone ``1``..``10`` as text, or ``unknown``."""
    number = _number(str(value).strip()) if value not in (None, "") else None
    return str(number) if number is not None and 1 <= number <= 10 else UNKNOWN
