"""LoRA adapters in PEFT's folder format, hot-loaded next to a shared base model.

A folder holds `adapter_config.json` (`r`, `lora_alpha`, `target_modules`, optional
`use_rslora`) and `adapter_model.safetensors` with `<module>.lora_A.weight` (r x in) and
`<module>.lora_B.weight` (out x r), module names optionally prefixed `base_model.model.`.

A targeted layer behaves as W' = W + scale * B @ A with scale = lora_alpha / r (or
lora_alpha / sqrt(r) with rsLoRA). It is computed as W x + scale * B (A x), which is the same map,
so the base weights stay untouched and shared: several adapters stay loaded at once and each
request picks one (or none) through `active_adapter`.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[\w-]+)?\.weight$")

_active: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpusched_lora_adapter", default=None)


class AdapterError(ValueError):
    """The adapter folder is malformed or does not fit the base model."""


@contextmanager
def active_adapter(name: str | None) -> Iterator[None]:
    """Route LoRA layers to adapter `name` (None: base model) for the calls inside the block."""
    token = _active.set(name)
    try:
        yield
    finally:
        _active.reset(token)


@dataclass(frozen=True)
class LoRAAdapter:
    name: str
    rank: int
    alpha: float
    scale: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A, B)
    source: str = ""

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(sorted(self.weights))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def read_adapter(folder: Path, name: str) -> LoRAAdapter:
    """Parse a PEFT LoRA folder into CPU tensors; validation against a model happens on attach."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterError(f"{folder} has no {CONFIG_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{folder / CONFIG_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{folder / CONFIG_FILE}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{folder}: peft_type {config['peft_type']!r} is not LORA")
    if config.get("fan_in_fan_out"):
        raise AdapterError(f"{folder}: fan_in_fan_out adapters (Conv1D bases) are not supported")
    try:
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
    except (KeyError, TypeError, ValueError):
        raise AdapterError(f"{folder / CONFIG_FILE}: needs an integer r and a numeric lora_alpha") from None
    if rank < 1:
        raise AdapterError(f"{folder / CONFIG_FILE}: r must be positive")
    if not math.isfinite(alpha):
        raise AdapterError(f"{folder / CONFIG_FILE}: lora_alpha must be a finite number, got {alpha}")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank

    weights_path = folder / WEIGHTS_FILE
    if not weights_path.exists():
        raise AdapterError(f"{folder} has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(weights_path)
    except Exception as exc:  # safetensors' own error for a truncated or corrupt file
        raise AdapterError(f"{weights_path}: not a readable safetensors file: {exc}") from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(f"{WEIGHTS_FILE}: unexpected tensor {key!r}")
        halves.setdefault(match["module"], {})[match["which"]] = tensor
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{WEIGHTS_FILE}: {module} has lora_{''.join(pair)} but not both A and B")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not match r={rank}")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise AdapterError(f"{module}: lora_A {a.dtype} / lora_B {b.dtype} are not floating point")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{module}: lora_A or lora_B holds NaN or infinite values")
        weights[module] = (a, b)
    if not weights:
        raise AdapterError(f"{WEIGHTS_FILE} holds no LoRA tensors")
    return LoRAAdapter(name=name, rank=rank, alpha=alpha, scale=scale, weights=weights, source=str(folder))


class LoRALinear(nn.Module):
    """A base Linear plus any number of named low-rank deltas; the active one applies per call."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        name = _active.get()
        if name is not None and name in self.deltas:
            a, b, scale = self.deltas[name]
            y = y + scale * F.linear(F.linear(x, a), b)
        return y


_Plan = list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]


def plan_attach(model: nn.Module, adapter: LoRAAdapter) -> _Plan:
    """Check every target of `adapter` against `model` and move its tensors to the layers' device.

    Nothing is changed yet, so a bad adapter fails here and leaves the served model as it was.
    """
    plan: _Plan = []
    for path, (a, b) in sorted(adapter.weights.items()):
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise AdapterError(f"adapter {adapter.name!r} targets {path!r}, which the model does not have") from None
        base = module.base if isinstance(module, LoRALinear) else module
        if not isinstance(base, nn.Linear):
            raise AdapterError(f"adapter {adapter.name!r} targets {path!r}, a {type(base).__name__}, not a Linear")
        if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
            raise AdapterError(
                f"adapter {adapter.name!r} {path}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit "
                f"a Linear {base.in_features} -> {base.out_features}"
            )
        weight = base.weight
        plan.append((path, module, a.to(weight.device, weight.dtype), b.to(weight.device, weight.dtype)))
    return plan


def install(model: nn.Module, name: str, scale: float, plan: _Plan) -> None:
    """Wrap each planned Linear (once) and register the adapter's delta under `name`."""
    for path, module, a, b in plan:
        if isinstance(module, LoRALinear):
            wrapper = module
        else:
            assert isinstance(module, nn.Linear)
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            wrapper = LoRALinear(module)
            setattr(parent, child, wrapper)
        wrapper.deltas[name] = (a, b, scale)


def attach(model: nn.Module, adapter: LoRAAdapter) -> None:
    """Install `adapter` into `model`; raises AdapterError, changing nothing, when it does not fit."""
    install(model, adapter.name, adapter.scale, plan_attach(model, adapter))


def detach(model: nn.Module, name: str) -> None:
    """Drop adapter `name` from every layer; layers keep their wrapper (cheap when no delta applies)."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.deltas.pop(name, None)


def merged_weight(base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A: what an adapter makes of a layer, for tests and offline merging."""
    return base.weight + scale * (b.to(base.weight.dtype) @ a.to(base.weight.dtype))
