"""The trainer's pure parts: shipped configs, overrides, data, checksums and the shared model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workloads.gpt import GPT, GPTConfig, greedy_generate, init_weights
from workloads.training import train
from workloads.training.data import make_batch


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_shipped_configs_set_their_stage_and_torch_adamw(stage: int) -> None:
    cfg = json.loads(train.shipped_config(stage).read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["optimizer"]["type"] == "AdamW"
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no CUDA/C++ kernel build needed
    assert cfg["train_micro_batch_size_per_gpu"] >= 1


def test_no_shipped_config_for_stage_3() -> None:
    with pytest.raises(ValueError, match="stage 3"):
        train.shipped_config(3)


def test_overrides_leave_the_file_alone() -> None:
    path = train.shipped_config(2)
    before = path.read_text()
    cfg = train.load_ds_config(path, precision="bf16", lr=0.5, micro_batch=3)
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["optimizer"]["params"]["lr"] == 0.5
    assert cfg["train_micro_batch_size_per_gpu"] == 3
    assert path.read_text() == before
    assert train.load_ds_config(path, precision="fp32")["bf16"] == {"enabled": False}
    with pytest.raises(ValueError, match="precision"):
        train.load_ds_config(path, precision="fp8")


def test_lr_override_creates_an_optimizer_section(tmp_path: Path) -> None:
    bare = tmp_path / "ds.json"
    bare.write_text('{"train_micro_batch_size_per_gpu": 1}')
    cfg = train.load_ds_config(bare, lr=0.1)
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"torch_adam": True, "lr": 0.1}}


def test_batches_are_deterministic_per_rank_and_step() -> None:
    x, y = make_batch(7, 0, 3, 4, 16, 50)
    x2, y2 = make_batch(7, 0, 3, 4, 16, 50)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert int(x.max()) < 50 and int(x.min()) >= 0
    assert not torch.equal(make_batch(7, 1, 3, 4, 16, 50)[0], x)  # ranks see different data
    assert not torch.equal(make_batch(7, 0, 4, 4, 16, 50)[0], x)
    with pytest.raises(ValueError):
        make_batch(0, 0, 0, 1, 1, 1)


def test_batches_follow_one_learnable_rule() -> None:
    x, y = make_batch(3, 0, 0, 8, 8, 97)
    pairs = {(int(a), int(b)) for a, b in zip(x.flatten(), y.flatten(), strict=True)}
    successor: dict[int, int] = {}
    for a, b in pairs:
        assert successor.setdefault(a, b) == b  # each token has exactly one next token


def test_checksum_is_stable_and_sensitive() -> None:
    model = GPT(
        GPTConfig(vocab_size=16, hidden_size=8, num_attention_heads=2, intermediate_size=16, max_position_embeddings=8)
    )
    init_weights(model, 1)
    digest, total = train.param_checksum(model)
    assert train.param_checksum(model) == (digest, total)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-6
    assert train.param_checksum(model)[0] != digest


def test_init_weights_is_a_function_of_the_seed() -> None:
    cfg = GPTConfig(vocab_size=16, hidden_size=8, num_attention_heads=2, intermediate_size=16)
    a, b, c = GPT(cfg), GPT(cfg), GPT(cfg)
    init_weights(a, 5)
    init_weights(b, 5)
    init_weights(c, 6)
    assert train.param_checksum(a) == train.param_checksum(b) != train.param_checksum(c)
    assert torch.equal(a.norm.weight, torch.ones(8))
    assert torch.equal(a.get_parameter("layers.0.mlp.up_proj.bias"), torch.zeros(16))


def test_gpt_config_validation_and_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="positive"):
        GPTConfig(num_hidden_layers=0)
    cfg = GPTConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=20,
    )
    assert cfg.num_parameters() == sum(p.numel() for p in GPT(cfg).parameters())
    assert GPTConfig.from_dict({**cfg.to_dict(), "torch_dtype": "bfloat16"}) == cfg


def test_model_is_causal_and_rejects_long_inputs() -> None:
    cfg = GPTConfig(
        vocab_size=32, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=8
    )
    model = GPT(cfg).eval()
    init_weights(model, 0)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    changed = ids.clone()
    changed[0, 4] = 9
    with torch.no_grad():
        assert torch.allclose(model(ids)[0, :4], model(changed)[0, :4], atol=1e-6)  # no peeking ahead
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long))
    out = greedy_generate(model, [1, 2, 3, 4, 5, 6, 7], 4)  # context window slides past 8 tokens
    assert len(out) == 4 and all(0 <= t < 32 for t in out)
    assert out == greedy_generate(model, [1, 2, 3, 4, 5, 6, 7], 4)


def test_parse_args_defaults_and_errors() -> None:
    args = train.parse_args([])
    assert (args.zero_stage, args.steps, args.backend, args.precision) == (2, 20, "auto", "config")
    with pytest.raises(SystemExit):
        train.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        train.parse_args(["--zero-stage", "1", "--deepspeed-config", "x.json"])
    assert train.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
