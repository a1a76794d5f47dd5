"""Fixtures for the agent's tests: the fake NVML installed beneath pynvml, per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpu_agent import fake_nvml

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvml"


@pytest.fixture
def machine() -> Iterator[Callable[[str], Path]]:
    """Call with a bundled machine name or a fixture file name from tests/fixtures/nvml."""

    def use(name: str) -> Path:
        local = FIXTURES / f"{name}.json"
        return fake_nvml.activate(local if local.is_file() else name)

    try:
        yield use
    finally:
        fake_nvml.deactivate()
