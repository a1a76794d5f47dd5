"""gpu-clustering (score): keep pods of one GPU request class together on the same nodes.

The FGD paper's GpuClustering baseline, in its simulator's integer form. A pod's class is "share"
(a GPU share) or "k-gpu" (k whole GPUs); CPU-only pods have none and score 0 everywhere. With
base = 25 * (maxGpu - free milli-GPU of the node) // maxGpu:
    the node runs only pods of this class:          base + 75
    it runs this class among others:                base + 50
    it runs no GPU pods:                            base + 25
    it runs only other classes:                     base
Classes per node are kept per snapshot and recounted only for nodes whose GPUs changed. Inside the
node: the first fully free GPUs, or for a share the fitting GPU with the least free share.
Args: `maxGpu` (default 8000, the largest node's GPUs in milli-GPU). Range 0..100, integers
(clipped on nodes larger than `maxGpu`). Fallback: none needed.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.common import first_fit_gpus, free_gpu_milli


def request_class(pod: PodRequest) -> str:
    if pod.gpu_milli:
        return "share"
    return f"{pod.gpu_count}-gpu" if pod.gpu_count else ""


class _Classes:
    """Per node: how many pods of each class it runs (columns grow as classes appear)."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot
        self.columns: dict[str, int] = {}
        self.counts = np.zeros((len(snapshot), 0), dtype=np.int64)
        self.free = np.full_like(snapshot.gpu_milli_free, -1)  # differs everywhere: first look counts all

    def refresh(self) -> None:
        snap = self.snapshot
        changed = np.flatnonzero((self.free != snap.gpu_milli_free).any(axis=1))
        for node in changed:
            row: dict[str, int] = {}
            for key in snap.node_pods[node]:
                cls = request_class(snap.pods[key])
                if cls:
                    row[cls] = row.get(cls, 0) + 1
            for cls in row:
                if cls not in self.columns:
                    self.columns[cls] = len(self.columns)
                    self.counts = np.pad(self.counts, ((0, 0), (0, 1)))
            self.counts[node] = 0
            for cls, count in row.items():
                self.counts[node, self.columns[cls]] = count
        self.free[changed] = snap.gpu_milli_free[changed]


class GpuClusteringArgs(PluginArgs, frozen=True):
    max_gpu: Annotated[int, msgspec.Meta(gt=0)] = 8_000  # milli-GPU


class GpuClustering(ScorePlugin, GpuChooser):
    name = "gpu-clustering"
    Args = GpuClusteringArgs

    def __init__(self, args: GpuClusteringArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.max_gpu = args.max_gpu

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        cls = request_class(pod)
        if not cls:
            return np.zeros(nodes.size)
        state = snap.memo("gpu-clustering-classes", _Classes)
        state.refresh()
        counts = state.counts[nodes]
        kinds = (counts > 0).sum(axis=1)
        column = state.columns.get(cls)
        mine = counts[:, column] > 0 if column is not None else np.zeros(nodes.size, dtype=bool)
        used = self.max_gpu - free_gpu_milli(snap, nodes)
        base = np.sign(used) * (np.abs(25 * used) // self.max_gpu)  # Go's truncating division
        bonus = np.where(mine, np.where(kinds == 1, 75, 50), np.where(kinds == 0, 25, 0))
        # Clipped for nodes larger than maxGpu (the paper's cluster has none).
        return np.clip(base + bonus, 0, 100).astype(np.float64)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        return first_fit_gpus(cycle, node)
