"""LoRA adapters: parsing PEFT folders and applying W + scale * B @ A per request."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from workloads.gpt import GPT, GPTConfig, greedy_generate
from workloads.inference.loader import load_model
from workloads.inference.lora import (
    AdapterError,
    LoRALinear,
    active_adapter,
    attach,
    detach,
    merged_weight,
    read_adapter,
)
from workloads.tools.make_model import write_adapter


def merged_copy(model: GPT, folder: Path) -> GPT:
    """A plain model whose targeted weights are W + scale * B @ A, as PEFT's merge would make them."""
    adapter = read_adapter(folder, "m")
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for path, (a, b) in adapter.weights.items():
            layer = merged.get_submodule(path)
            assert isinstance(layer, nn.Linear)
            layer.weight.copy_(merged_weight(layer, a, b, adapter.scale))
    return merged


def test_read_adapter(tmp_path: Path, tiny_config: GPTConfig) -> None:
    folder = write_adapter(tmp_path / "a", tiny_config, targets=("q_proj", "down_proj"), rank=2, alpha=6, layers=[1])
    adapter = read_adapter(folder, "a")
    assert adapter.modules == ("layers.1.attn.q_proj", "layers.1.mlp.down_proj")
    assert (adapter.rank, adapter.alpha, adapter.scale) == (2, 6.0, 3.0)
    a, b = adapter.weights["layers.1.mlp.down_proj"]
    assert a.shape == (2, tiny_config.intermediate_size) and b.shape == (tiny_config.hidden_size, 2)
    assert adapter.nbytes == sum(x.nbytes + y.nbytes for x, y in adapter.weights.values())
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    assert read_adapter(folder, "a").scale == pytest.approx(6 / 2**0.5)


def _folder(tmp_path: Path, config: dict[str, object] | str | None, tensors: dict[str, torch.Tensor] | None) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    if config is not None:
        (folder / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


A = torch.zeros(2, 32)
B = torch.zeros(32, 2)


@pytest.mark.parametrize(
    ("config", "tensors", "message"),
    [
        (None, None, "no adapter_config.json"),
        ("{", None, "adapter_config.json"),
        ({"r": 2, "peft_type": "IA3"}, None, "not LORA"),
        ({"r": 2, "fan_in_fan_out": True}, None, "fan_in_fan_out"),
        ({"lora_alpha": 2}, None, "integer r"),
        ({"r": 0}, None, "positive"),
        ({"r": 2}, None, "no adapter_model.safetensors"),
        ({"r": 2}, {"layers.0.attn.q_proj.weight": A}, "unexpected tensor"),
        ({"r": 2}, {"layers.0.attn.q_proj.lora_A.weight": A}, "not both"),
        (
            {"r": 3},
            {"layers.0.attn.q_proj.lora_A.weight": A, "layers.0.attn.q_proj.lora_B.weight": B},
            "do not match r=3",
        ),
    ],
)
def test_malformed_adapters_are_rejected(
    tmp_path: Path, config: dict[str, object] | str | None, tensors: dict[str, torch.Tensor] | None, message: str
) -> None:
    with pytest.raises(AdapterError, match=message):
        read_adapter(_folder(tmp_path, config, tensors), "bad")


def test_peft_key_variants_are_accepted(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {"r": 2},
        {
            "base_model.model.layers.0.attn.q_proj.lora_A.default.weight": A,
            "base_model.model.layers.0.attn.q_proj.lora_B.default.weight": B,
            "layers.1.attn.v_proj.lora_A.weight": A.clone(),
            "layers.1.attn.v_proj.lora_B.weight": B.clone(),
        },
    )
    assert read_adapter(folder, "x").modules == ("layers.0.attn.q_proj", "layers.1.attn.v_proj")


def test_adapter_output_equals_the_merged_model(tiny_snapshot: Path, tiny_config: GPTConfig, tmp_path: Path) -> None:
    model = load_model(tiny_snapshot).model
    base = copy.deepcopy(model)
    folder = write_adapter(tmp_path / "a", tiny_config, targets=("q_proj", "v_proj", "lm_head"), seed=4, std=0.3)
    merged = merged_copy(model, folder)
    attach(model, read_adapter(folder, "a"))
    assert isinstance(model.get_submodule("layers.0.attn.q_proj"), LoRALinear)
    assert isinstance(model.lm_head, LoRALinear)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        plain = model(ids)
        with active_adapter("a"):
            tuned = model(ids)
        with active_adapter("not-loaded"):
            unknown = model(ids)
    assert torch.equal(plain, base(ids))
    assert torch.equal(unknown, plain)
    assert torch.allclose(tuned, merged(ids), atol=1e-5)
    assert not torch.allclose(tuned, plain, atol=1e-3)
    with active_adapter("a"):
        assert greedy_generate(model, [3, 1, 4], 6) == greedy_generate(merged, [3, 1, 4], 6)
    detach(model, "a")
    with torch.no_grad(), active_adapter("a"):
        assert torch.equal(model(ids), plain)


def test_two_adapters_side_by_side(tiny_snapshot: Path, tiny_config: GPTConfig, tmp_path: Path) -> None:
    model = load_model(tiny_snapshot).model
    one = write_adapter(tmp_path / "one", tiny_config, seed=1, std=0.3)
    two = write_adapter(tmp_path / "two", tiny_config, targets=("up_proj",), seed=2, std=0.3)
    expected = {name: merged_copy(model, folder) for name, folder in (("one", one), ("two", two))}
    attach(model, read_adapter(one, "one"))
    attach(model, read_adapter(two, "two"))
    ids = torch.tensor([[7, 7, 2]])
    for name, reference in expected.items():
        with torch.no_grad(), active_adapter(name):
            assert torch.allclose(model(ids), reference(ids), atol=1e-5)


def test_a_misfit_adapter_changes_nothing(tiny_snapshot: Path, tiny_config: GPTConfig, tmp_path: Path) -> None:
    model = load_model(tiny_snapshot).model
    wider = dataclasses.replace(tiny_config, hidden_size=48)
    bad_shape = write_adapter(tmp_path / "wide", wider, seed=1)
    with pytest.raises(AdapterError, match="do not fit"):
        attach(model, read_adapter(bad_shape, "wide"))
    deeper = dataclasses.replace(tiny_config, num_hidden_layers=3)
    missing = write_adapter(tmp_path / "deep", deeper, layers=[2], seed=1)
    with pytest.raises(AdapterError, match="does not have"):
        attach(model, read_adapter(missing, "deep"))
    not_linear = _folder(tmp_path, {"r": 2}, {"norm.lora_A.weight": A, "norm.lora_B.weight": B})
    with pytest.raises(AdapterError, match="LayerNorm, not a Linear"):
        attach(model, read_adapter(not_linear, "norm"))
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
