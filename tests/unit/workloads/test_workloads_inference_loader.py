"""Loading safetensors snapshots: same weights, same outputs, and a timed load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workloads.gpt import GPT, GPTConfig
from workloads.inference.cache import ModelRef
from workloads.inference.loader import load_model, resolve_device, resolve_dtype, weight_files
from workloads.tools.make_model import config_for_bytes, random_tensors, write_model


def reference_model(snapshot: Path, config: GPTConfig) -> GPT:
    model = GPT(config)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(snapshot):
        state.update(load_file(path))
    model.load_state_dict(state)
    return model.eval()


def test_load_gives_the_stored_weights(tiny_snapshot: Path, tiny_config: GPTConfig) -> None:
    loaded = load_model(tiny_snapshot)
    assert loaded.config == tiny_config
    assert not any(p.is_meta or p.requires_grad for p in loaded.model.parameters())
    expected = reference_model(tiny_snapshot, tiny_config)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), expected(ids))
    stats = loaded.stats
    assert stats.seconds > 0 and stats.files == 1 and stats.device == "cpu" and stats.dtype == "float32"
    assert stats.bytes == (tiny_snapshot / "model.safetensors").stat().st_size
    assert stats.gbytes_per_second > 0


def test_sharded_snapshot_loads_every_shard(hub: Path, tiny_config: GPTConfig) -> None:
    snap = write_model(hub, ModelRef.parse("acme/sharded"), tiny_config, shard_bytes=30_000, seed=3)
    loaded = load_model(snap)
    assert loaded.stats.files == len(weight_files(snap)) > 1
    single = write_model(hub, ModelRef.parse("acme/single"), tiny_config, seed=3)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.model.state_dict().values(), load_model(single).model.state_dict().values(), strict=True)
    )


def test_dtype_conversion(tiny_snapshot: Path) -> None:
    loaded = load_model(tiny_snapshot, dtype=resolve_dtype("bfloat16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert resolve_dtype("auto") is None
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int4")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_missing_or_extra_tensors_fail(tiny_snapshot: Path, tmp_path: Path) -> None:
    state = load_file(tiny_snapshot / "model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_snapshot / "config.json").read_text())
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, str(broken / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"lm_head\.weight"):
        load_model(broken)
    save_file({**state, "extra.weight": torch.zeros(1)}, str(broken / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"extra\.weight"):
        load_model(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no safetensors"):
        load_model(broken)


def test_weight_files_ignore_adapters(tiny_snapshot: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("b.safetensors", "a.safetensors", "adapter_model.safetensors"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in weight_files(folder)] == ["a.safetensors", "b.safetensors"]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "b.safetensors"}}))
    assert [p.name for p in weight_files(folder)] == ["b.safetensors"]


def test_random_tensors_and_size_targets(tiny_config: GPTConfig) -> None:
    tensors = dict(random_tensors(tiny_config, torch.bfloat16, seed=0))
    assert sum(t.numel() for t in tensors.values()) == tiny_config.num_parameters()
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    cfg = config_for_bytes(3 * 10**9, torch.bfloat16)
    assert 2.5e9 < cfg.num_parameters() * 2 <= 3e9
    assert config_for_bytes(1, torch.bfloat16).num_hidden_layers == 1
