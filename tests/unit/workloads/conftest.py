"""A tiny generated model in a temporary Hugging Face-layout cache, shared by the workload tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from workloads.gpt import GPTConfig
from workloads.inference.cache import ModelRef
from workloads.tools.make_model import write_model

TINY = GPTConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
)
REF = ModelRef.parse("acme/tiny-gpt@main")


@pytest.fixture
def tiny_config() -> GPTConfig:
    return TINY


@pytest.fixture
def tiny_ref() -> ModelRef:
    return REF


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    return tmp_path / "hub"


@pytest.fixture
def tiny_snapshot(hub: Path) -> Path:
    return write_model(hub, REF, TINY, seed=11)
