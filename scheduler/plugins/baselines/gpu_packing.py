"""gpu-packing (score): partly used GPUs first, then idle GPUs of busy nodes, then idle nodes.

The FGD paper's GpuPacking baseline, in its simulator's integer form (free shares before placement):
    idle node (every GPU fully free):   max(33 - free GPUs, free GPUs)
    uses fully free GPUs of a busy node: max(50 - fully free GPUs taken, 33)
    fits on partly used GPUs only:       max(100 - (sum over them of free * 100 // 1000) // 10, 50)
where the GPUs taken are, in order of least free share first, those that fit. A pod without GPUs
scores 0 everywhere. Inside the node: the first fully free GPUs, or for a share the fitting GPU
with the least free share. No args. Range 0..100, integers. Fallback: none needed.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.core.node_table import MILLI
from scheduler.plugins.common import first_fit_gpus


class GpuPacking(ScorePlugin, GpuChooser):
    name = "gpu-packing"

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        if not pod.wants_gpu:
            return np.zeros(nodes.size)
        usable = snap.gpu_valid[nodes] & snap.gpu_healthy[nodes]
        free = snap.gpu_milli_free[nodes].astype(np.int64)
        fully = (usable & (free >= MILLI)).sum(axis=1)
        idle = fully == usable.sum(axis=1)
        if pod.gpu_milli:
            fit = np.where(cycle.eligible(nodes), free, MILLI + 1).min(axis=1)
            shared = np.maximum(100 - (fit * 100 // MILLI) // 10, 50)
            score = np.where(fit >= MILLI, np.maximum(50 - 1, 33), shared)
        else:
            score = np.full(nodes.size, max(50 - pod.gpu_count, 33))
        return np.where(idle, np.maximum(33 - fully, fully), score).astype(np.float64)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        return first_fit_gpus(cycle, node)
