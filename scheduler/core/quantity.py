"""Kubernetes resource quantities ("40Gi", "500m", "1e3") and version strings ("12.4").

A quantity is read as apimachinery's resource.ParseQuantity reads it:

    <quantity>  ::= <sign>? <number> <suffix>?
    <number>    ::= <digits> | <digits> "." <digits>? | "." <digits>
    <suffix>    ::= Ki | Mi | Gi | Ti | Pi | Ei            (binary: 2**10 .. 2**60)
                  | n | u | m | k | M | G | T | P | E     (decimal: 10**-9 .. 10**18)
                  | ("e" | "E") <sign>? <digits>          (decimal exponent: 1e3 = 1000)

with no spaces; a bare "E" is exa, "E3" an exponent. Values round up, as Quantity.Value() and
MilliValue() do. Every quantity gpusched reads is an amount, so a negative value (which the grammar
admits) is refused, as is one beyond what an int64 holds (Kubernetes would clamp it).
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Context, Decimal
from functools import lru_cache

_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
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
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>[KMGTPE]i|[numkMGTPE]))?"
)
# Rounding only ever upwards, as Kubernetes rounds a quantity it cannot hold exactly.
_CONTEXT = Context(prec=64, rounding=ROUND_CEILING)
_INT64_MAX = 2**63 - 1


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


def _parse_any(text: str | int | float) -> Decimal:
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise QuantityError(f"not a quantity: {text!r}")
    match = _QUANTITY.fullmatch(str(text))
    if not match:
        raise QuantityError(f"not a quantity: {text!r} (for example 40Gi, 500m, 1e3)")
    try:
        value = _CONTEXT.multiply(Decimal(match["number"] + (match["exponent"] or "")), _SUFFIX[match["suffix"] or ""])
    except ArithmeticError as exc:  # an exponent beyond the decimal module's range
        raise QuantityError(f"quantity out of range: {text!r}") from exc
    if value < 0:
        raise QuantityError(f"negative quantity: {text!r} (an amount cannot be below 0)")
    if value > _INT64_MAX:
        raise QuantityError(f"quantity out of range: {text!r}")
    return value


def _whole_and_milli(text: str | int | float) -> tuple[int, int]:
    value = _parse_any(text)
    return math.ceil(value), math.ceil(_CONTEXT.multiply(value, 1000))


# Pods repeat a few quantities ("4", "32Gi"): short strings are parsed once.
_short = lru_cache(maxsize=4096)(_whole_and_milli)


def _parsed(text: str | int | float) -> tuple[int, int]:
    return _short(text) if type(text) is str and len(text) <= 32 else _whole_and_milli(text)


def parse_quantity(text: str | int | float) -> int:
    """Whole units of a quantity, rounded up ("1.5Gi" -> 1610612736, "500m" -> 1)."""
    return _parsed(text)[0]


def parse_milli(text: str | int | float) -> int:
    """Milli-units of a quantity, rounded up ("500m" -> 500, "2" -> 2000, "500u" -> 1), as CPU is counted."""
    return _parsed(text)[1]


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
