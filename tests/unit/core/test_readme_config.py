"""The configuration the README shows is one gpusched starts with."""

import re
from pathlib import Path

import yaml

from scheduler.core import registry

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_config_example_loads() -> None:
    text = README.read_text()
    block = re.search(r"takes YAML:\n\n```yaml\n(.*?)```", text, re.S)
    assert block is not None
    config = registry.config_from(yaml.safe_load(block.group(1)))
    assert config.gang_max_span == "gpusched.io/rack"
    assert dict(config.scores)["cold-start"] == 3.0
    assert config.filters == ("gpu-fit", "cuda", "freshness", "inference-fit")
