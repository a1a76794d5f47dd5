"""Typed plugin arguments, checked once at start-up.

Each plugin declares its arguments as a `PluginArgs` subclass: a frozen msgspec Struct whose fields
have defaults and bounds (`Annotated[float, Meta(ge=0)]`), spelled in snake_case in Python and
camelCase in the config file (`count_weight` is `countWeight`). `parse_args` is the one parser: it
rejects unknown keys, wrong types (strictly: `"false"` is not a boolean, `"3"` not a number) and
out-of-range values with a ConfigError naming the plugin and the key. Cross-field rules go in the
Struct's `__post_init__` (raise ValueError; the message is reported with the plugin's name, and
with the key when it starts with "<key>: ").
Plugins receive the parsed instance in `__init__` and never read raw mappings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from scheduler.core.config import ConfigError
from scheduler.core.quantity import QuantityError, parse_quantity


class PluginArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Base of every plugin's arguments (a plugin without arguments uses it as it is)."""


A = TypeVar("A", bound=PluginArgs)
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def parse_args(plugin: str, kind: type[A], raw: Mapping[str, Any] | None) -> A:
    """`raw` (the plugin's `pluginArgs` entry) as `kind`, or a ConfigError naming plugin and key."""
    try:
        args = msgspec.convert(dict(raw or {}), kind, strict=True)
    except msgspec.ValidationError as exc:
        match = _AT.match(str(exc))
        what, path = (match["what"], match["path"] or "") if match else (str(exc), "")
        what = what.replace("`", "")
        unknown = re.search(r"unknown field (\S+)$", what)
        if unknown:
            path, what = f"{path}.{unknown[1]}", "unknown argument"
        else:  # a __post_init__ rule that names its key first ("pullBytesPerSecond: ...") points at it
            named = re.match(r"^(\w+): (.*)$", what, re.S)
            if named and named[1] in kind.__struct_encode_fields__:
                path, what = f"{path}.{named[1]}", named[2]
        known = ", ".join(sorted(kind.__struct_encode_fields__)) or "none"
        hint = f" (known: {known})" if unknown and path.count(".") == 1 else ""
        raise ConfigError(f"pluginArgs {plugin}{path}: {what[:1].lower()}{what[1:]}{hint}") from exc
    bad = _not_finite(args, "")
    if bad:
        raise ConfigError(f"pluginArgs {plugin}{bad[0]}: {bad[1]} is not a finite number")
    return args


def _not_finite(value: Any, path: str) -> tuple[str, float] | None:
    """(path, value) of the first float in `value`, a Struct or a sequence of them, that is NaN or infinite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, msgspec.Struct):
        for field, key in zip(value.__struct_fields__, value.__struct_encode_fields__, strict=True):
            found = _not_finite(getattr(value, field), f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            found = _not_finite(item, f"{path}[{i}]")
            if found:
                return found
    return None


def quantity(value: float | int | str, what: str) -> float:
    """A number, or a Kubernetes quantity string such as "100M" or "1Gi", as a float."""
    try:
        number = float(parse_quantity(value)) if isinstance(value, str) else float(value)
    except (QuantityError, OverflowError) as exc:
        raise ValueError(f"{what}: {value!r} is not a number or quantity") from exc
    if not math.isfinite(number):
        raise ValueError(f"{what}: {value!r} is not a finite number")
    return number
