"""A small GPT-style decoder shared by the training job and the inference server.

Pre-norm transformer blocks with causal self-attention (PyTorch's scaled_dot_product_attention)
and a GELU MLP, learned position embeddings and an untied output head. Parameter names follow the
Hugging Face convention (`embed_tokens`, `layers.N.attn.q_proj`, ...), so LoRA adapters name their
target modules the way PEFT writes them. It imports only torch: the inference loader must run on
machines that have no DeepSpeed or FastAPI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "gpusched-gpt"


@dataclass(frozen=True)
class GPTConfig:
    """Model shape; the field names match the keys of a Hugging Face config.json."""

    vocab_size: int = 256
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GPTConfig:
        """Reads a config.json; keys this model does not use (architectures, torch_dtype) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, "architectures": ["GPT"], **dataclasses.asdict(self)}

    def num_parameters(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = 4 * h * h + 2 * h * i + i + h + 4 * h  # attention, MLP (+ biases), two norms
        return 2 * v * h + self.max_position_embeddings * h + self.num_hidden_layers * per_layer + 2 * h


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        shape = (b, t, self.num_heads, h // self.num_heads)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (batch, time) -> next-token logits (batch, time, vocab)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {t} tokens exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        positions = torch.arange(t, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def initial_value(name: str, shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """GPT-2 style initial value of parameter `name`: zero biases, unit norms, N(0, 0.02) otherwise."""
    if name.endswith("bias"):
        return torch.zeros(shape)
    if ".ln" in name or name.startswith("norm."):
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * 0.02


def init_weights(model: GPT, seed: int) -> None:
    """Initialise from a fixed seed, in name order, so every rank starts from the same weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.copy_(initial_value(name, p.shape, gen))


@torch.no_grad()
def greedy_generate(model: GPT, token_ids: list[int], max_new_tokens: int) -> list[int]:
    """Append `max_new_tokens` argmax tokens; the context is the last max_position_embeddings tokens.

    Recomputes the whole context per token (no KV cache): the reference server runs tiny models,
    and this keeps the output a pure function of the weights, which the tests rely on.
    """
    device = next(model.parameters()).device
    window = model.config.max_position_embeddings
    ids = list(token_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-window:]], dtype=torch.long, device=device)
        next_id = int(model(context)[0, -1].argmax())
        ids.append(next_id)
        out.append(next_id)
    return out
