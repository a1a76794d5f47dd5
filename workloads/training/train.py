"""DeepSpeed training entrypoint: `python -m workloads.training.train` (one process per GPU).

torchrun (see `workloads.training.launch`) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; run by hand it defaults to a single process on 127.0.0.1. The ZeRO stage, optimiser
and batch size come from a DeepSpeed JSON config (`--zero-stage N` picks a shipped one). The
backend is NCCL when CUDA is available and gloo otherwise, so the same code trains on a GPU node
and in CI on CPU.

At the end every rank computes a SHA-256 over its parameters and the ranks compare them: with data
parallelism (ZeRO 0-2) every rank must hold identical weights, and a mismatch means the gradient
reduction or the ZeRO all-gather went wrong. Each rank prints one `RESULT {json}` line and, with
`--output-dir`, writes `rank-<N>.json`; the exit status is non-zero when the loss is not finite or
the replicas differ.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from workloads.gpt import GPT, GPTConfig, init_weights
from workloads.training.data import make_batch

CONFIG_DIR = Path(__file__).with_name("configs")
ZERO_STAGES = (0, 1, 2)


def shipped_config(stage: int) -> Path:
    if stage not in ZERO_STAGES:
        raise ValueError(f"no shipped config for ZeRO stage {stage}; stages: {ZERO_STAGES}")
    return CONFIG_DIR / f"zero{stage}.json"


def load_ds_config(
    path: Path, precision: str = "config", lr: float | None = None, micro_batch: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed config with command-line overrides applied; never mutates the file."""
    cfg: dict[str, Any] = json.loads(path.read_text())
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
        cfg.pop("fp16", None)
    elif precision == "fp32":
        cfg["bf16"] = {"enabled": False}
        cfg.pop("fp16", None)
    elif precision != "config":
        raise ValueError(f"precision must be config, fp32 or bf16, not {precision!r}")
    if lr is not None:
        cfg.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})
        cfg["optimizer"].setdefault("params", {})["lr"] = lr
    if micro_batch is not None:
        cfg["train_micro_batch_size_per_gpu"] = micro_batch
        cfg.pop("train_batch_size", None)
    return cfg


def param_checksum(module: torch.nn.Module) -> tuple[str, float]:
    """(sha256 of every parameter as float32 bytes in name order, sum of all parameters)."""
    digest = hashlib.sha256()
    total = 0.0
    for name, p in sorted(module.named_parameters()):
        data = p.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(data.numpy().tobytes())
        total += float(data.double().sum())
    return digest.hexdigest(), total


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _skip_cpu_shm_kernel() -> None:
    """Keep DeepSpeed's CPU communication on plain gloo.

    On the CPU accelerator DeepSpeed compiles a shared-memory all-reduce kernel with the host C++
    compiler the first time a process group starts: minutes on a small CI machine, for a speed-up a
    few-step test does not need. `build_shm_op` returning None is DeepSpeed's own "not available"
    path, after which every collective goes through torch.distributed with gloo.
    """
    comm_torch: Any = importlib.import_module("deepspeed.comm.torch")
    if hasattr(comm_torch, "build_shm_op"):
        comm_torch.build_shm_op = lambda: None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m workloads.training.train", description=(__doc__ or "").split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--deepspeed-config", type=Path, help="DeepSpeed JSON config")
    src.add_argument(
        "--zero-stage",
        type=int,
        choices=ZERO_STAGES,
        default=2,
        help="use the shipped config for this ZeRO stage (default 2)",
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--precision", choices=("config", "fp32", "bf16"), default="config")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--micro-batch", type=int, help="override train_micro_batch_size_per_gpu")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    ap.add_argument("--log-every", type=int, default=1)
    ap.add_argument(
        "--cpu-shm-allreduce",
        action="store_true",
        help="on CPU, let DeepSpeed build its shared-memory all-reduce kernel (a C++ JIT build)",
    )
    ap.add_argument("--output-dir", type=Path, help="write rank-<N>.json here")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    return args


def _log(rank: int, msg: str) -> None:
    print(f"[rank {rank}] {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ):
        os.environ.setdefault(key, value)
    backend = default_backend() if args.backend == "auto" else args.backend
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)

    import deepspeed  # heavy import (seconds); after argument errors have had their chance

    if backend == "gloo" and not args.cpu_shm_allreduce:
        _skip_cpu_shm_kernel()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank, world = dist.get_rank(), dist.get_world_size()

    ds_path = args.deepspeed_config or shipped_config(args.zero_stage)
    ds_config = load_ds_config(ds_path, args.precision, args.lr, args.micro_batch)
    model_cfg = GPTConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        max_position_embeddings=args.seq_len,
    )
    model = GPT(model_cfg)
    init_weights(model, args.seed)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    stage = engine.zero_optimization_stage()
    micro = engine.train_micro_batch_size_per_gpu()
    _log(
        rank,
        f"world={world} backend={backend} device={engine.device} zero_stage={stage} "
        f"micro_batch={micro} params={sum(p.numel() for p in model.parameters())} "
        f"init_s={time.perf_counter() - t0:.2f} topology={os.environ.get('GPUSCHED_TOPOLOGY_PATH', '-')}",
    )

    losses: list[float] = []
    t1 = time.perf_counter()
    for step in range(args.steps):
        x, y = make_batch(args.seed, rank, step, micro, args.seq_len, args.vocab_size)
        x, y = x.to(engine.device), y.to(engine.device)
        logits = engine(x)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        engine.backward(loss)
        engine.step()
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if rank == 0 and ((step + 1) % args.log_every == 0 or step + 1 == args.steps):
            _log(rank, f"step {step + 1}/{args.steps} loss {losses[-1]:.4f}")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t1

    checksum, param_sum = param_checksum(engine.module)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, checksum)
    consistent = all(c == checksum for c in gathered)
    finite = all(math.isfinite(v) for v in losses)
    result = {
        "rank": rank,
        "world_size": world,
        "backend": backend,
        "device": str(engine.device),
        "zero_stage": stage,
        "precision": "bf16" if engine.bfloat16_enabled() else "fp32",
        "steps": args.steps,
        "losses": losses,
        "final_loss": losses[-1],
        "loss_finite": finite,
        "checksum": checksum,
        "param_sum": param_sum,
        "replicas_consistent": consistent,
        "train_seconds": train_s,
        "node_rank": os.environ.get("GROUP_RANK"),
        "topology_path": os.environ.get("GPUSCHED_TOPOLOGY_PATH"),
        "deepspeed": deepspeed.__version__,
        "torch": torch.__version__,
    }
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / f"rank-{rank}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    _log(rank, f"checksum {checksum} consistent={consistent} final_loss={losses[-1]:.4f} train_s={train_s:.2f}")
    dist.barrier()
    dist.destroy_process_group()
    if not finite:
        print(f"rank {rank}: loss is not finite: {losses}", file=sys.stderr)
        return 2
    if not consistent:
        print(f"rank {rank}: parameters differ across ranks: {gathered}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
