"""Load a cached snapshot's safetensors weights onto a device, and time it.

The load time is the number gpusched's cold-start plugin predicts (weights bytes over disk
throughput), so it is measured here the same way the server reports it and the GPU check records
it: from the first file opened until the model's tensors are on the device (CUDA synchronised).
The model is built on the meta device and the loaded tensors are assigned into it, so no time or
memory goes to a random initialisation that the weights would overwrite.

Depends on torch and safetensors only: it runs on GPU machines without FastAPI or DeepSpeed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from workloads.gpt import GPT, GPTConfig

INDEX_FILE = "model.safetensors.index.json"
ADAPTER_FILE = "adapter_model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadStats:
    seconds: float
    bytes: int
    files: int
    device: str
    dtype: str

    @property
    def gbytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass
class LoadedModel:
    model: GPT
    config: GPTConfig
    snapshot: Path
    stats: LoadStats


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str = "auto") -> torch.dtype | None:
    """None keeps the dtype the weights were stored in."""
    if name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name]


def weight_files(snapshot: Path) -> list[Path]:
    """The shards named by the index file when there is one, else every *.safetensors but adapters."""
    index = snapshot / INDEX_FILE
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = [snapshot / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(p for p in snapshot.glob("*.safetensors") if p.name != ADAPTER_FILE)
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {snapshot}")
    return files


def read_config(snapshot: Path) -> GPTConfig:
    return GPTConfig.from_dict(json.loads((snapshot / "config.json").read_text()))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(snapshot: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Read config.json and the weights of `snapshot` onto `device`; raises on missing or extra tensors."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    config = read_config(snapshot)
    files = weight_files(snapshot)
    _synchronize(device)
    start = time.perf_counter()
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(path, device=str(device)))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    _synchronize(device)
    seconds = time.perf_counter() - start
    stored = {str(t.dtype).removeprefix("torch.") for t in state.values()}
    stats = LoadStats(
        seconds=seconds,
        bytes=sum(p.stat().st_size for p in files),
        files=len(files),
        device=str(device),
        dtype=",".join(sorted(stored)),
    )
    return LoadedModel(model=model, config=config, snapshot=snapshot, stats=stats)
