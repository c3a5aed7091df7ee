"""Durations and byte sizes as policies write them: ``"90s"``, ``"1h30m"``, ``"256MiB"``.

Parsing is strict, because a policy that silently reads ``"5 min"`` as something else moves or forgets memories
it should not. Formatting is the inverse, used in reasons and dry runs so that what we print reads like what the
user wrote.

Durations: one or more ``<number><unit>`` groups, units ``s m h d w`` (seconds to weeks), e.g. ``"90s"``,
``"5m"``, ``"1h30m"``, ``"1.5d"``, ``"2w"``. A bare number is refused: ``within: 60`` could mean seconds or
minutes. Sizes: a non-negative integer (bytes) or ``<number><unit>`` with binary (``KiB MiB GiB TiB``, powers of
1024) or decimal (``B KB MB GB TB``, powers of 1000) units, case-insensitive.
"""

from __future__ import annotations

import math
import re
import reprlib

DURATION_UNITS: dict[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
# Printed durations stop at days: "30d" and "61d" read better than "4w2d" and "8w5d".
_FORMAT_UNITS = {unit: size for unit, size in DURATION_UNITS.items() if unit != "w"}
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?\s*[smhdw]\s*)+$"
SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([KkMmGgTt][Ii]?)?[Bb]\s*$"  # JSON Schema has no flags
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw])")
_DURATION_FULL = re.compile(DURATION_PATTERN)
_SIZE_FULL = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|b)\s*$", re.IGNORECASE)

DURATION_HINT = "expected a duration like '1h'"
SIZE_HINT = "expected a size like '256MiB'"

# Messages quote the offending value; a YAML alias can make it a structure with billions of leaves, and a string
# can be megabytes long, so quotes are bounded.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxstring, _QUOTE.maxother = 2, 60, 60
_QUOTE.maxtuple = _QUOTE.maxlist = _QUOTE.maxdict = _QUOTE.maxset = 4


def quote(value: object) -> str:
    """``value`` as its author wrote it in YAML (``true``, ``null``, ``{above: 90}``; strings quoted), cut short for
    messages: a policy author never sees a Python value such as ``True`` or ``None``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list | tuple):
        return yaml_words(_QUOTE.repr(value))
    return _QUOTE.repr(value)


def yaml_words(text: str) -> str:
    """Python's literals in a message made by a library, in YAML's words."""
    return re.sub(r"\b(True|False|None)\b", lambda m: {"True": "true", "False": "false", "None": "null"}[m[1]], text)


def parse_duration(value: object) -> float:
    """Seconds in a duration string.

    Raises:
        ValueError: ``value`` is not a string of ``<number><unit>`` groups, or it is zero.
    """
    if not isinstance(value, str) or not _DURATION_FULL.fullmatch(value):
        raise ValueError(f"{DURATION_HINT} (units s, m, h, d, w), got {quote(value)}")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(value))
    if not 0 < seconds < math.inf:
        raise ValueError(f"{DURATION_HINT}, greater than zero and finite, got {quote(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes in a size: a non-negative integer or a string like ``"512KiB"`` (rounded down to whole bytes).

    Raises:
        ValueError: not a non-negative integer nor a size string with a known unit.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{SIZE_HINT}, not negative, got {quote(value)}")
        return value
    match = _SIZE_FULL.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{SIZE_HINT} (units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), got {quote(value)}")
    size = float(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(size):
        raise ValueError(f"{SIZE_HINT}, finite, got {quote(value)}")
    return int(size)


def format_duration(seconds: float) -> str:
    """The exact ``"1h30m"``-style spelling at second resolution, days the largest unit (``"0s"`` for zero or less)."""
    remaining = round(seconds)
    if remaining <= 0:
        return "0s"
    parts = []
    for unit, size in _FORMAT_UNITS.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_age(seconds: float) -> str:
    """A duration cut to its two largest units, for reasons (``"3d4h"`` rather than ``"3d4h12m7s"``)."""
    remaining = round(seconds)
    if remaining <= 0:
        return "0s"
    parts = []
    for unit, size in _FORMAT_UNITS.items():
        count, remaining = divmod(remaining, size)
        if count or parts:
            parts.append(f"{count}{unit}" if count else "")
        if len(parts) == 2:
            break
    return "".join(parts)


def format_size(size: float) -> str:
    """Binary units with at most one decimal (``"256MiB"``, ``"1.5KiB"``, ``"12B"``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + unit
    return f"{int(size)}B"
