import pytest

from scheduler.core.quantity import QuantityError, parse_milli, parse_quantity, parse_version, version_code


@pytest.mark.parametrize(
    ("text", "value"),
    [("40Gi", 40 * 2**30), ("1.5Gi", 1610612736), ("500M", 500_000_000), ("1", 1), (2, 2), ("1e3", 1000), ("100m", 1)],
)
def test_quantities(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_milli() -> None:
    assert parse_milli("500m") == 500 and parse_milli("2") == 2000 and parse_milli("0.25") == 250


@pytest.mark.parametrize("bad", ["", "Gi", "12 apples", "-1Gi", "1..2"])
def test_bad_quantities(bad: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


def test_versions() -> None:
    assert parse_version("12.4") == (12, 4)
    assert version_code((12, 4)) > version_code((12, 2)) > version_code((11, 8))
    with pytest.raises(QuantityError):
        parse_version("12.x")
