"""Kubernetes resource quantities ("40Gi", "500m", "1.5") and version strings ("12.4")."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^\s*([+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?\s*$")


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


def _parse(text: str | int | float) -> Decimal:
    if isinstance(text, bool):
        raise QuantityError(f"not a quantity: {text!r}")
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.match(str(text))
    if not match:
        raise QuantityError(f"not a quantity: {text!r}")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"not a quantity: {text!r}") from exc
    if suffix == "m":
        return value / 1000
    return value * _SUFFIX[suffix]


def parse_quantity(text: str | int | float) -> int:
    """Whole units of a quantity, rounded up ("1.5Gi" -> 1610612736, "500m" -> 1)."""
    value = _parse(text)
    return math.ceil(value)


def parse_milli(text: str | int | float) -> int:
    """Milli-units of a quantity ("500m" -> 500, "2" -> 2000), as CPU is counted."""
    value = _parse(text) * 1000
    return math.ceil(value)


def parse_version(text: str) -> tuple[int, ...]:
    """A dotted version ("12.4", "535.104.05") as a tuple of integers."""
    parts = str(text).strip().lstrip("vV").split(".")
    try:
        return tuple(int(p) for p in parts if p != "")
    except ValueError as exc:
        raise QuantityError(f"not a version: {text!r}") from exc


def version_code(version: tuple[int, ...]) -> int:
    """A (major, minor) version as one comparable integer: 12.4 -> 12004."""
    major = version[0] if version else 0
    minor = version[1] if len(version) > 1 else 0
    return major * 1000 + minor


def format_bytes(value: float) -> str:
    """Bytes as a short human string in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"  # pragma: no cover
