"""Top-level configuration keys: defaults, accepted values, and the errors that name the key."""

import pytest

from scheduler.core.config import ConfigError
from scheduler.plugins import registry


@pytest.mark.parametrize(("value", "grace"), [(None, 30.0), (0, 0.0), (2.5, 2.5), (120, 120.0)])
def test_informer_grace(value: float | None, grace: float) -> None:
    data = {} if value is None else {"informerGraceSeconds": value}
    assert registry.config_from(data).informer_grace_s == grace


@pytest.mark.parametrize("value", [-1, "30s", True, float("inf"), float("nan"), None, [30]])
def test_a_bad_informer_grace_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="informerGraceSeconds"):
        registry.config_from({"informerGraceSeconds": value})
