"""Quantities as apimachinery's resource.ParseQuantity reads them: the value rounded up to whole
units (Quantity.Value) and to thousandths (Quantity.MilliValue)."""

import pytest

from scheduler.core.quantity import QuantityError, parse_milli, parse_quantity, parse_version, version_code


@pytest.mark.parametrize(
    ("text", "units", "milli"),
    [
        ("40Gi", 40 * 2**30, 40 * 2**30 * 1000),
        ("1.5Gi", 1610612736, 1610612736000),  # 1.5 * 2**30
        ("1Ki", 1024, 1024_000),
        ("1Mi", 2**20, 2**20 * 1000),
        ("1Ti", 2**40, 2**40 * 1000),
        ("1Pi", 2**50, 2**50 * 1000),
        ("1Ei", 2**60, 2**60 * 1000),
        ("500M", 500_000_000, 500_000_000_000),
        ("2k", 2000, 2_000_000),
        ("3G", 3 * 10**9, 3 * 10**12),
        ("1T", 10**12, 10**15),
        ("1P", 10**15, 10**18),
        ("1E", 10**18, 10**21),  # a bare E is exa, not an exponent
        ("1", 1, 1000),
        (2, 2, 2000),
        (0.25, 1, 250),  # JSON numbers are quantities too
        ("0", 0, 0),
        ("100m", 1, 100),  # 0.1 rounds up to 1
        ("500u", 1, 1),  # 0.0005 -> 1 unit, 0.5 milli -> 1
        ("250n", 1, 1),  # 0.00000025 -> 1 unit, 0.00025 milli -> 1
        ("1e3", 1000, 1_000_000),
        ("1E3", 1000, 1_000_000),
        ("1e+3", 1000, 1_000_000),
        ("2e-3", 1, 2),  # 0.002
        ("1.5e2", 150, 150_000),
        ("5.", 5, 5000),  # digits and a point
        (".5", 1, 500),  # a point and digits
        ("+5", 5, 5000),
        ("-0", 0, 0),
        ("0.25", 1, 250),
        ("007", 7, 7000),
    ],
)
def test_every_form_kubernetes_accepts(text: str | int | float, units: int, milli: int) -> None:
    assert parse_quantity(text) == units
    assert parse_milli(text) == milli


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Gi",  # no number
        "12 apples",
        "1..2",
        "1 Gi",  # ParseQuantity takes no space
        " 1",
        "1K",  # kilo is a lower-case k
        "1ki",
        "1KiB",
        "1i",
        "1e",  # an exponent needs digits
        "1e1.5",  # and whole ones
        "1e3Gi",  # one suffix only
        "+-1",
        ".",
        "1.2.3",
        "0x10",
        "1e400",  # beyond what an int64 holds
        "9Ei",  # 9 * 2**60 > 2**63 - 1
        "-1Gi",  # the grammar's sign, but every quantity gpusched reads is an amount
        "-1m",
        True,
        None,
        [],
    ],
)
def test_bad_quantities(bad: object) -> None:
    with pytest.raises(QuantityError, match="quantity"):
        parse_quantity(bad)  # type: ignore[arg-type]
    with pytest.raises(QuantityError, match="quantity"):
        parse_milli(bad)  # type: ignore[arg-type]


def test_versions() -> None:
    assert parse_version("12.4") == (12, 4)
    assert version_code((12, 4)) > version_code((12, 2)) > version_code((11, 8))
    with pytest.raises(QuantityError):
        parse_version("12.x")
