"""Write a model or a LoRA adapter with random weights, in the layouts the inference server reads.

Tests, the GPU check and demos need weights in a node's Hugging Face cache without downloading
any: `write_model` stores config.json plus safetensors shards (and the shard index) as one
snapshot of `org/name@revision`; `write_adapter` writes a PEFT LoRA folder for chosen layers.

    python -m workloads.tools.make_model --hf-cache DIR --model org/name@main --hidden-size 1024 --layers 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from workloads.gpt import GPT, GPTConfig, initial_value
from workloads.inference.cache import ModelRef, hub_cache_dir, write_snapshot
from workloads.inference.loader import DTYPES, INDEX_FILE
from workloads.inference.lora import CONFIG_FILE, WEIGHTS_FILE


def parameter_shapes(config: GPTConfig) -> list[tuple[str, torch.Size]]:
    with torch.device("meta"):
        model = GPT(config)
    return sorted((name, p.shape) for name, p in model.named_parameters())


def random_tensors(
    config: GPTConfig, dtype: torch.dtype, seed: int, device: str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) for every parameter, GPT-2 style initialised; generated on `device` (a GPU
    makes multi-GB models quick), one tensor at a time so memory stays at one tensor."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, shape in parameter_shapes(config):
        if device == "cpu":
            value = initial_value(name, shape, gen)
        elif name.endswith("bias"):
            value = torch.zeros(shape, device=device)
        elif ".ln" in name or name.startswith("norm."):
            value = torch.ones(shape, device=device)
        else:
            value = torch.randn(shape, generator=gen, device=device) * 0.02
        yield name, value.to(dtype).cpu()


def write_model(
    cache_dir: Path,
    ref: ModelRef,
    config: GPTConfig,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    shard_bytes: int = 1 << 30,
    device: str = "cpu",
) -> Path:
    """Store a random model as one snapshot of `ref` in the hub cache at `cache_dir`; returns its folder."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}

    def flush() -> None:
        fname = f"part-{len(shards):05d}.safetensors"
        save_file(pending, str(staging / fname), metadata={"format": "pt"})
        shards.append(list(pending))
        pending.clear()

    size = 0
    for name, tensor in random_tensors(config, dtype, seed, device):
        if pending and size + tensor.nbytes > shard_bytes:
            flush()
            size = 0
        pending[name] = tensor
        size += tensor.nbytes
    flush()
    files: dict[str, bytes | Path] = {}
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        files[fname] = staging / f"part-{i:05d}.safetensors"
        weight_map.update(dict.fromkeys(names, fname))
    config_json = {**config.to_dict(), "torch_dtype": str(dtype).removeprefix("torch.")}
    files["config.json"] = (json.dumps(config_json, indent=2) + "\n").encode()
    if len(shards) > 1:
        total = sum(p.stat().st_size for p in files.values() if isinstance(p, Path))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        files[INDEX_FILE] = json.dumps(index, indent=2).encode()
    snapshot = write_snapshot(cache_dir, ref, files)
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    return snapshot


def write_adapter(
    folder: Path,
    config: GPTConfig,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    std: float = 0.02,
    layers: Sequence[int] | None = None,
    base_model: str = "",
) -> Path:
    """A PEFT LoRA folder with random lora_A and lora_B for the `targets` of `layers` (default all)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(parameter_shapes(config))
    chosen = set(range(config.num_hidden_layers) if layers is None else layers)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        module, _, leaf = name.rpartition(".")
        if leaf != "weight" or module.rpartition(".")[2] not in targets:
            continue
        if module.startswith("layers.") and int(module.split(".")[1]) not in chosen:
            continue
        out_features, in_features = shape
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_features, generator=gen) * std
        tensors[f"{key}.lora_B.weight"] = torch.randn(out_features, rank, generator=gen) * std
    if not tensors:
        raise ValueError(f"targets {list(targets)} match no Linear layer of the model")
    save_file(tensors, str(folder / WEIGHTS_FILE))
    adapter_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2) + "\n")
    return folder


def config_for_bytes(
    target_bytes: int, dtype: torch.dtype, hidden_size: int = 4096, vocab_size: int = 32000, max_layers: int = 64
) -> GPTConfig:
    """A Llama-7B-like shape with as many layers as fit `target_bytes` (at least one)."""
    base = GPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=max(hidden_size // 128, 1),
        intermediate_size=hidden_size * 8 // 3,
        max_position_embeddings=2048,
    )
    itemsize = torch.empty((), dtype=dtype).element_size()
    one = base.num_parameters() * itemsize
    per_layer = (replace(base, num_hidden_layers=2).num_parameters() - base.num_parameters()) * itemsize
    layers = max(1, min(max_layers, 1 + int((target_bytes - one) // per_layer)))
    return replace(base, num_hidden_layers=layers)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m workloads.tools.make_model", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--hf-cache", help="hub cache folder (default as the server resolves it)")
    ap.add_argument("--model", required=True, type=ModelRef.parse)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-positions", type=int, default=128)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter-dir", type=Path, help="also write a LoRA adapter (q_proj, v_proj) here")
    args = ap.parse_args(argv)
    config = GPTConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        max_position_embeddings=args.max_positions,
    )
    snapshot = write_model(hub_cache_dir(args.hf_cache), args.model, config, DTYPES[args.dtype], args.seed)
    print(snapshot)
    if args.adapter_dir is not None:
        print(write_adapter(args.adapter_dir, config, seed=args.seed + 1, base_model=args.model.repo_id))


if __name__ == "__main__":
    main()
