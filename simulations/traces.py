"""The Alibaba GPU trace (cluster-trace-gpu-v2023) as NodeStates and PodRequests.

Nodes: `sn, cpu_milli, memory_mib, gpu, model` -> a node with `gpu` GPUs of `model`, a fresh
report (so every GPU is known) and no links. Pods: `name, cpu_milli, memory_mib, num_gpu,
gpu_milli, gpu_spec, ...` -> a request for `num_gpu` whole GPUs, or a share of `gpu_milli` / 1000
of one GPU when it is below 1000, of any model in `gpu_spec` (`|`-separated; empty = any).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.core.types import GpuInfo, NodeState, PodRequest

MiB = 2**20
TRACE_DIR_ENV = "GPUSCHED_TRACES"
TRACE_NAME = "alibaba-gpu-2023"
BUNDLED = Path(__file__).resolve().parent / "data"
NODE_FILE = "openb_node_list_gpu_node.csv"
TRACES = ("default", "gpushare40", "multigpu20", "gpuspec10", "cpu050")
# Unallocated GPU % at arrived = 100 %, mean of 10 seeds, from the trace's README (FGD, ATC 2023).
PUBLISHED: dict[str, dict[str, float]] = {
    trace: dict(zip(("random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd"), row, strict=True))
    for trace, row in (
        ("default", (13.70, 9.38, 8.35, 8.22, 7.14, 4.77)),
        ("gpushare40", (15.14, 10.70, 10.24, 10.23, 8.56, 6.04)),
        ("multigpu20", (13.08, 8.15, 6.66, 6.50, 6.27, 4.47)),
        ("gpuspec10", (13.74, 9.83, 8.04, 7.76, 6.90, 5.34)),
        ("cpu050", (10.98, 6.97, 6.48, 6.54, 6.44, 5.00)),
    )
}


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and row."""


@dataclass(frozen=True, slots=True)
class TracePod:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU
    gpu_spec: tuple[str, ...] = ()

    @property
    def gpu_total(self) -> int:
        return self.num_gpu * self.gpu_milli

    def request(self, name: str | None = None) -> PodRequest:
        share = 0 < self.gpu_milli < 1000 and self.num_gpu >= 1
        return PodRequest(
            namespace="trace",
            name=name or self.name,
            gpu_count=0 if share else self.num_gpu,
            gpu_milli=self.gpu_milli if share else 0,
            gpu_models=self.gpu_spec,
            cpu_milli=self.cpu_milli,
            memory=self.memory_mib * MiB,
        )


def trace_dir() -> Path:
    """$GPUSCHED_TRACES/alibaba-gpu-2023 (or $GPUSCHED_TRACES itself), else the copy shipped in
    simulations/data/alibaba-gpu-2023 (its README gives the source and terms)."""
    env = os.environ.get(TRACE_DIR_ENV)
    if env:
        base = Path(env)
        return base / TRACE_NAME if (base / TRACE_NAME).is_dir() else base
    return BUNDLED / TRACE_NAME


def pod_file(trace: str) -> Path:
    return trace_dir() / f"openb_pod_list_{trace}.csv"


def node_file() -> Path:
    return trace_dir() / NODE_FILE


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from exc


def _int(row: dict[str, str], key: str, path: Path, line: int, default: int | None = None) -> int:
    raw = row.get(key)
    if raw in (None, "") and default is not None:
        return default
    try:
        return int(float(raw))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise TraceError(f"{path}:{line}: column {key!r} is {raw!r}, not a number") from exc


def load_nodes(path: Path | str) -> list[NodeState]:
    path = Path(path)
    nodes = []
    for line, row in enumerate(_rows(path), start=2):
        gpus = _int(row, "gpu", path, line, 0)
        model = (row.get("model") or "").strip()
        name = (row.get("sn") or "").strip()
        if not name:
            raise TraceError(f"{path}:{line}: no node name (column 'sn')")
        nodes.append(
            NodeState(
                name=name,
                labels={"kubernetes.io/hostname": name},
                gpu_count=gpus,
                cpu_milli=_int(row, "cpu_milli", path, line),
                memory=_int(row, "memory_mib", path, line) * MiB,
                gpus=tuple(GpuInfo(index=i, model=model) for i in range(gpus)),
                report_age_s=0.0,
            )
        )
    return nodes


def load_pods(path: Path | str) -> list[TracePod]:
    path = Path(path)
    pods = []
    for line, row in enumerate(_rows(path), start=2):
        num = _int(row, "num_gpu", path, line, 0)
        milli = _int(row, "gpu_milli", path, line, 0)
        if num < 0 or not 0 <= milli <= 1000 or (num > 1 and 0 < milli < 1000):
            raise TraceError(f"{path}:{line}: num_gpu={num}, gpu_milli={milli} is not a valid request")
        spec = tuple(sorted(s.strip() for s in (row.get("gpu_spec") or "").split("|") if s.strip()))
        pods.append(
            TracePod(
                name=(row.get("name") or f"pod-{line}").strip(),
                cpu_milli=_int(row, "cpu_milli", path, line, 0),
                memory_mib=_int(row, "memory_mib", path, line, 0),
                num_gpu=num if milli else 0,
                gpu_milli=milli if num else 0,
                gpu_spec=spec,
            )
        )
    return pods
