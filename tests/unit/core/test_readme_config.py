"""The configuration the README shows is one gpusched starts with."""

import re
from pathlib import Path

import yaml

from scheduler.plugins import registry

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_config_example_loads() -> None:
    text = README.read_text()
    block = re.search(r"takes YAML:\n\n```yaml\n(.*?)```", text, re.S)
    assert block is not None
    config = registry.config_from(yaml.safe_load(block.group(1)))
    assert config.gang_max_span == "network.topology.nvidia.com/leaf"
    assert config.informer_grace_s == 30.0
    assert dict(config.scores)["cold-start"] == 3.0
    assert config.filters == ("gpu-fit", "cuda", "freshness", "inference-fit", "disk-fit")


def test_shipped_config_is_the_default_policy() -> None:
    """A config file that lists plugins replaces the defaults: the manifests' must spell them out."""
    shipped = registry.config_from(
        yaml.safe_load((README.parent / "manifests" / "extender" / "config.yaml").read_text())
    )
    default = registry.config_from(None)
    assert shipped.filters == default.filters
    assert dict(shipped.scores) == dict(default.scores)
    assert dict(shipped.plugin_args["gpu-memory-packing"]) == dict(default.plugin_args["gpu-memory-packing"])
