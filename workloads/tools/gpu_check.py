"""GPU check: one real DeepSpeed training step, and the inference weights-load time warm and cold.

    python -m workloads.tools.gpu_check --out DIR [--size-gb 3] [--cpu]

1. Training: `workloads.training.launch` execs torchrun for one node, which starts
   `workloads.training.train` (ZeRO stage 2, bf16 on a GPU, NCCL) for a few steps; the rank's
   result JSON (loss, parameter checksum) is folded into the report.
2. Weights load: a random bf16 model of about --size-gb is written into a Hugging Face-layout cache
   and loaded onto the device through `InferenceService.load`, the code path the server runs and
   whose time it exports as gpusched_inference_weights_load_seconds:
   - cold: after evicting the files from the page cache (`/proc/sys/vm/drop_caches` when
     writable, else fsync + posix_fadvise(DONTNEED) per file), with the resident fraction
     measured by mincore before and after, so the report says how cold "cold" really was;
   - warm: loaded twice more, the second figure reported.
   A tmpfs work folder cannot be evicted at all, so a disk-backed folder is chosen when /tmp is tmpfs.
3. Server: when FastAPI is importable, the HTTP app answers /readyz, /generate, /adapters and
   /metrics in-process with a tiny model on the same device.

Prints a summary and writes everything to DIR/gpu_check.json. `--cpu` runs the same steps on the
CPU with gloo and a small model, for a dry run on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import importlib.metadata
import json
import mmap
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from workloads.gpt import GPTConfig
from workloads.inference.cache import ModelRef
from workloads.inference.loader import weight_files
from workloads.inference.service import InferenceService, ServerSettings
from workloads.tools.make_model import config_for_bytes, write_adapter, write_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(text: str, lines: int = 40) -> list[str]:
    return text.splitlines()[-lines:]


def run_training(work: Path, cpu: bool, steps: int, timeout: float) -> dict[str, Any]:
    """One node through the real launcher -> torchrun -> trainer chain."""
    out_dir = work / "train"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    annotations = out_dir / "annotations"
    annotations.write_text(
        'gpusched.io/rank="0"\ngpusched.io/topology-path="gpu-check/local"\ngpusched.io/min-member="1"\n'
    )
    env = {
        **os.environ,
        "NNODES": "1",
        "JOB_COMPLETION_INDEX": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "NPROC_PER_NODE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        "-m",
        "workloads.training.launch",
        "--annotations",
        str(annotations),
        "--",
        "--steps",
        str(steps),
        "--zero-stage",
        "2",
        "--precision",
        "fp32" if cpu else "bf16",
        "--hidden-size",
        "256",
        "--layers",
        "4",
        "--heads",
        "8",
        "--seq-len",
        "128",
        "--output-dir",
        str(out_dir),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "log_tail": _tail(output)}
    wall = time.perf_counter() - start
    result_file = out_dir / "rank-0.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    ok = proc.returncode == 0 and result is not None and result["loss_finite"] and result["replicas_consistent"]
    return {
        "ok": ok,
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 2),
        "command": cmd,
        "result": result,
        "log_tail": _tail(proc.stdout + proc.stderr),
    }


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_fraction(paths: Sequence[Path]) -> float | None:
    """Fraction of the files' pages in the page cache (mincore); None where that cannot be read."""
    try:
        libc = _libc()
        page = mmap.PAGESIZE
        resident = total = 0
        for path in paths:
            size = path.stat().st_size
            if size == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    return None
                pages = (size + page - 1) // page
                vec = (ctypes.c_ubyte * pages)()
                rc = libc.mincore(ctypes.c_void_p(addr), size, vec)
                libc.munmap(ctypes.c_void_p(addr), size)
                if rc != 0:
                    return None
                resident += sum(b & 1 for b in bytes(vec))
                total += pages
            finally:
                os.close(fd)
        return resident / total if total else None
    except (OSError, AttributeError):
        return None


def evict(paths: Sequence[Path], allow_drop_caches: bool) -> tuple[str, list[str]]:
    """Push the files out of the page cache; returns the method that ran and what failed on the way."""
    notes: list[str] = []
    os.sync()
    if allow_drop_caches:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return "drop_caches", notes
        except OSError as exc:
            notes.append(f"drop_caches: {exc}")
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise_dontneed", notes
    except (OSError, AttributeError) as exc:
        notes.append(f"posix_fadvise: {exc}")
        return "none", notes


def filesystem_of(path: Path) -> str:
    """The fs type of the mount holding `path` (longest matching mount point in /proc/mounts)."""
    best, fstype = "", "unknown"
    try:
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if (
                len(parts) >= 3
                and (resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/"))
                and len(parts[1]) >= len(best)
            ):
                best, fstype = parts[1], parts[2]
    except OSError:
        pass
    return fstype


def choose_work_dir(requested: Path | None) -> tuple[Path, list[str]]:
    """`requested`, else the first of /tmp, /var/tmp, the repo that is not memory-backed."""
    if requested is not None:
        return requested, []
    notes: list[str] = []
    for base in (Path("/tmp"), Path("/var/tmp"), REPO_ROOT):
        fstype = filesystem_of(base)
        if fstype in ("tmpfs", "ramfs"):
            notes.append(f"{base} is {fstype}: its pages cannot be evicted, so it gives no cold figure")
            continue
        if os.access(base, os.W_OK):
            return base / "gpusched-gpu-check", notes
    return Path("/tmp/gpusched-gpu-check"), notes


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed_load(settings: ServerSettings, device: torch.device) -> dict[str, Any]:
    service = InferenceService(settings)
    loaded = service.load()
    gauge = service.metrics.registry.get_sample_value(
        "gpusched_inference_weights_load_seconds", {"model": str(settings.model)}
    )
    stats = loaded.stats
    figure = {
        "seconds": round(stats.seconds, 4),
        "gbytes_per_second": round(stats.gbytes_per_second, 3),
        "metric_seconds": gauge,
        "dtype": stats.dtype,
    }
    del loaded, service
    _free(device)
    return figure


def measure_weights_load(
    work: Path, device: torch.device, size_bytes: int, cpu: bool, allow_drop_caches: bool
) -> dict[str, Any]:
    dtype = torch.bfloat16
    config = config_for_bytes(size_bytes, dtype, hidden_size=512 if cpu else 4096, vocab_size=4096 if cpu else 32000)
    cache = work / "hub"
    shutil.rmtree(cache, ignore_errors=True)
    ref = ModelRef.parse("gpusched-check/random-gpt@main")
    start = time.perf_counter()
    gen_device = "cuda" if device.type == "cuda" else "cpu"
    snapshot = write_model(cache, ref, config, dtype=dtype, seed=0, shard_bytes=1 << 30, device=gen_device)
    write_seconds = time.perf_counter() - start
    files = [p.resolve() for p in weight_files(snapshot)]
    total = sum(p.stat().st_size for p in files)
    settings = ServerSettings(model=ref, hf_cache=cache, device=str(device))

    before = resident_fraction(files)
    method, notes = evict(files, allow_drop_caches)
    after = resident_fraction(files)
    cold = _timed_load(settings, device)
    cold.update(
        {
            "eviction": method,
            "resident_fraction_before_evict": before,
            "resident_fraction_at_load": after,
            "eviction_notes": notes,
        }
    )
    warm_first = _timed_load(settings, device)
    warm = _timed_load(settings, device)
    warm.update({"first_warm_seconds": warm_first["seconds"], "resident_fraction_at_load": resident_fraction(files)})
    return {
        "model": str(ref),
        "bytes": total,
        "files": len(files),
        "config": config.to_dict(),
        "work_dir": str(work),
        "filesystem": filesystem_of(work),
        "write_seconds": round(write_seconds, 2),
        "device": str(device),
        "cold": cold,
        "warm": warm,
    }


async def _server_calls(app: Any, adapter_dir: Path) -> dict[str, Any]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://check") as client:
        ready = await client.get("/readyz")
        base = await client.post("/generate", json={"token_ids": [1, 2, 3], "max_new_tokens": 8})
        added = await client.post("/adapters", json={"name": "check", "source": str(adapter_dir)})
        tuned = await client.post("/generate", json={"token_ids": [1, 2, 3], "max_new_tokens": 8, "adapter": "check"})
        metrics = await client.get("/metrics")
    return {
        "readyz": ready.status_code,
        "generate": base.json(),
        "adapter_status": added.status_code,
        "generate_with_adapter": tuned.json(),
        "metrics_has_load_time": "gpusched_inference_weights_load_seconds{" in metrics.text,
    }


def check_server(work: Path, device: torch.device) -> dict[str, Any]:
    try:
        from workloads.inference.server import create_app
    except ImportError as exc:
        return {"ok": False, "error": f"HTTP app not importable here: {exc}"}
    config = GPTConfig()
    ref = ModelRef.parse("gpusched-check/tiny-gpt@main")
    cache = work / "tiny-hub"
    shutil.rmtree(cache, ignore_errors=True)
    write_model(cache, ref, config, seed=1)
    adapter_dir = write_adapter(work / "tiny-adapter", config, seed=2, std=0.3)
    service = InferenceService(ServerSettings(model=ref, hf_cache=cache, device=str(device), adapter_root=work))
    service.load()
    calls = asyncio.run(_server_calls(create_app(service, load_on_startup=False), adapter_dir))
    calls["ok"] = (
        calls["readyz"] == 200
        and calls["adapter_status"] == 200
        and calls["metrics_has_load_time"]
        and calls["generate"]["token_ids"] != calls["generate_with_adapter"]["token_ids"]
    )
    return calls


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info.update(
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory,
        )
    for package in ("deepspeed", "pydantic", "fastapi", "safetensors", "huggingface_hub"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workloads.tools.gpu_check", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU: gloo, small model, no drop_caches")
    ap.add_argument("--size-gb", type=float, help="weights to generate (default 3 on a GPU, 0.05 with --cpu)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, help="where the generated cache goes (default: disk-backed /tmp)")
    ap.add_argument("--train-timeout", type=float, default=300)
    ap.add_argument("--skip", action="append", default=[], choices=("training", "weights", "server"))
    args = ap.parse_args(argv)

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu for a dry run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    work, notes = choose_work_dir(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    size_gb = args.size_gb if args.size_gb is not None else (0.05 if args.cpu else 3.0)
    report: dict[str, Any] = {
        "mode": "cpu" if args.cpu else "gpu",
        "environment": environment(),
        "work_dir_notes": notes,
    }

    def section(name: str, fn: Any, *fn_args: Any) -> None:
        if name in args.skip:
            return
        started = time.perf_counter()
        try:
            report[name] = fn(*fn_args)
        except Exception as exc:
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(f"gpu_check: {name} done in {time.perf_counter() - started:.1f} s", flush=True)

    section("training", run_training, work, args.cpu, args.steps, args.train_timeout)
    section("weights_load", measure_weights_load, work, device, int(size_gb * 1e9), args.cpu, not args.cpu)
    section("server", check_server, work, device)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(report))
    failed: list[str] = [k for k in ("training", "server") if k in report and not report[k].get("ok")]
    if "error" in report.get("weights_load", {}):
        failed.append("weights_load")
    if failed:
        print(f"gpu_check: FAILED: {', '.join(failed)} (details in {args.out / 'gpu_check.json'})", file=sys.stderr)
        return 1
    return 0


def summary(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"device: {env.get('gpu', 'cpu')}  torch {env['torch']}  deepspeed {env.get('deepspeed')}"]
    tr = report.get("training")
    if tr:
        res = tr.get("result") or {}
        lines.append(
            f"training: ok={tr.get('ok')} backend={res.get('backend')} zero={res.get('zero_stage')} "
            f"precision={res.get('precision')} losses={res.get('losses')} wall={tr.get('wall_seconds')} s "
            f"{tr.get('error', '')}"
        )
    wl = report.get("weights_load")
    if wl and "cold" in wl:
        gb = wl["bytes"] / 1e9
        lines.append(f"weights load ({gb:.2f} GB, {wl['files']} files, {wl['filesystem']}, to {wl['device']}):")
        lines.append(
            f"  cold {wl['cold']['seconds']:.3f} s ({wl['cold']['gbytes_per_second']:.2f} GB/s) "
            f"eviction={wl['cold']['eviction']} resident {wl['cold']['resident_fraction_before_evict']} "
            f"-> {wl['cold']['resident_fraction_at_load']}"
        )
        lines.append(
            f"  warm {wl['warm']['seconds']:.3f} s ({wl['warm']['gbytes_per_second']:.2f} GB/s), "
            f"first warm {wl['warm']['first_warm_seconds']:.3f} s"
        )
    elif wl:
        lines.append(f"weights load: {wl.get('error')}")
    sv = report.get("server")
    if sv:
        lines.append(f"server: ok={sv.get('ok')} {sv.get('error', '')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
