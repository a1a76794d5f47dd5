"""Plugin arguments are checked once, at start-up: scheduler/core/args.py's parse_args and the
registry's config_from refuse a bad `pluginArgs` entry with a ConfigError naming plugin and key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import pytest

from scheduler.core.args import PluginArgs, parse_args
from scheduler.core.config import ConfigError
from scheduler.core.fragmentation import TypicalPodArg
from scheduler.plugins import registry
from scheduler.plugins.fragmentation import FragmentationArgs
from scheduler.plugins.freshness import FreshnessArgs
from scheduler.plugins.gpu_memory_packing import GpuMemoryPackingArgs

NAN, INF = math.nan, math.inf


@dataclass(frozen=True)
class BadArgs:
    id: str
    plugin: str
    args: dict[str, Any]  # the plugin's pluginArgs entry
    key: str  # where the message says the problem is, after "<plugin>."
    what: str  # and what it says about it

    @property
    def config(self) -> dict[str, Any]:
        return {"pluginArgs": {self.plugin: self.args}}


# Shared with test_config_cli.py, which feeds each of these to gpusched-extender as a config file.
BAD = [
    BadArgs(
        "unknown-argument",
        "gpu-memory-packing",
        {"countWeigth": 0.5},
        "countWeigth",
        "unknown argument (known: countWeight)",
    ),
    BadArgs("wrong-type", "gpu-memory-packing", {"countWeight": "lots"}, "countWeight", "expected float, got str"),
    BadArgs("string-for-a-boolean", "freshness", {"requireReport": "false"}, "requireReport", "expected bool, got str"),
    BadArgs("out-of-range", "gpu-memory-packing", {"countWeight": 1.5}, "countWeight", "expected float <= 1"),
    BadArgs("out-of-range-below", "freshness", {"scoreMissing": -1}, "scoreMissing", "expected float >= 0"),
    BadArgs("nan", "cold-start", {"pullBytesPerSecond": NAN}, "pullBytesPerSecond", "nan is not a finite number"),
    BadArgs("no-typical-pods", "fragmentation", {"typicalPods": []}, "typicalPods", "expected array of length >= 1"),
    BadArgs("nan-in-a-bounded-field", "gpu-memory-packing", {"countWeight": NAN}, "countWeight", "expected float"),
    BadArgs("infinite", "fragmentation", {"packDelta": INF}, "packDelta", "inf is not a finite number"),
    BadArgs(
        "nested-wrong-type",
        "fragmentation",
        {"typicalPods": [{"gpus": 1}, {"gpus": "two"}]},
        "typicalPods[1].gpus",
        "expected int, got str",
    ),
    BadArgs(
        "nested-unknown",
        "fragmentation",
        {"typicalPods": [{"gpus": 1, "gpuMili": 500}]},
        "typicalPods[0].gpuMili",
        "unknown argument",
    ),
    BadArgs(
        "nested-out-of-range",
        "fragmentation",
        {"typicalPods": [{"gpus": 1, "gpuMilli": 1001}]},
        "typicalPods[0].gpuMilli",
        "expected int <= 1000",
    ),
    BadArgs(
        "nested-cross-field-rule",
        "fragmentation",
        {"typicalPods": [{"gpus": 2, "gpuMilli": 500}]},
        "typicalPods[0]",
        "a share of a GPU (gpuMilli below 1000) is for one GPU only",
    ),
]


def expected_start(case: BadArgs) -> str:
    return f"pluginArgs {case.plugin}.{case.key}: "


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_parse_args_names_plugin_and_key(case: BadArgs) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_args(case.plugin, registry.PLUGINS[case.plugin].Args, case.args)
    message = str(caught.value)
    assert message.startswith(expected_start(case)), message
    assert case.what in message


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_config_from_refuses_the_config(case: BadArgs) -> None:
    with pytest.raises(ConfigError) as caught:
        registry.config_from(case.config)
    message = str(caught.value)
    assert message.startswith(expected_start(case)), message
    assert case.what in message


@pytest.mark.parametrize(
    ("plugin", "args", "expected"),
    [
        ("freshness", {"requireReport": False}, FreshnessArgs(require_report=False)),
        ("freshness", {"requireReport": True, "scoreMissing": 100}, FreshnessArgs(True, 100.0)),
        ("gpu-memory-packing", {"countWeight": 0}, GpuMemoryPackingArgs(0.0)),  # an int where a float goes
        ("gpu-memory-packing", None, GpuMemoryPackingArgs()),
        (
            "fragmentation",
            {"typicalPods": [{"gpus": 1, "gpuMilli": 500}]},
            FragmentationArgs(typical_pods=(TypicalPodArg(gpus=1, gpu_milli=500),)),
        ),
    ],
    ids=["false", "bounds-inclusive", "int-for-float", "no-args", "share-of-one-gpu"],
)
def test_good_arguments_parse_to_the_typed_args(plugin: str, args: dict[str, Any] | None, expected: Any) -> None:
    assert parse_args(plugin, registry.PLUGINS[plugin].Args, args) == expected
    config = registry.config_from({"pluginArgs": {plugin: args or {}}})
    assert registry.build(config) is not None


def test_a_plugin_without_arguments_refuses_any() -> None:
    with pytest.raises(ConfigError, match=r"^pluginArgs nvlink\.x: unknown argument \(known: none\)$"):
        registry.config_from({"pluginArgs": {"nvlink": {"x": 1}}})


def test_pluginargs_of_an_unknown_plugin_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^pluginArgs: unknown plugin 'gpu-memory-packin'$"):
        registry.config_from({"pluginArgs": {"gpu-memory-packin": {"countWeight": 0.5}}})


class DemoArgs(PluginArgs, frozen=True):
    count_weight: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    strict: bool = False

    def __post_init__(self) -> None:
        if self.strict and self.count_weight > 0.9:
            raise ValueError("strict needs countWeight <= 0.9")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"countWeight": "3"}, "pluginArgs demo.countWeight: expected float, got str"),
        ({"countWeight": True}, "pluginArgs demo.countWeight: expected float, got bool"),
        ({"strict": 1}, "pluginArgs demo.strict: expected bool, got int"),
        ({"count_weight": 0.1}, "pluginArgs demo.count_weight: unknown argument (known: countWeight, strict)"),
        ({"strict": True, "countWeight": 1.0}, "pluginArgs demo: strict needs countWeight <= 0.9"),
        ({"countWeight": -INF}, "pluginArgs demo.countWeight: expected float >= 0.0"),
    ],
    ids=["numeric-string", "bool-for-float", "int-for-bool", "python-spelling", "cross-field", "minus-infinity"],
)
def test_parse_args_messages(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_args("demo", DemoArgs, raw)
    assert str(caught.value) == message


def test_an_infinite_nested_weight_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^pluginArgs fragmentation\.typicalPods\[0\]\.weight: "):
        registry.config_from({"pluginArgs": {"fragmentation": {"typicalPods": [{"gpus": 1, "weight": INF}]}}})


def test_a_quantity_too_large_for_a_float_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^pluginArgs cold-start.*pullBytesPerSecond"):
        registry.config_from({"pluginArgs": {"cold-start": {"pullBytesPerSecond": "1e999"}}})
