"""dot-product (score): Tetris-style alignment of the pod's request with the node's free resources.

    dot   = (cpu_free / maxCpu * cpu / maxCpu + gpu_free / maxGpu * gpu / maxGpu) / 2
    score = int(100 * (1 - dot))

The FGD paper's DotProd baseline (merged GPU dimension, normalised by the largest node): the node
whose free vector (milli-CPU, milli-GPU summed over its GPUs, before placement) has the smallest
dot product with the pod's request (milli-CPU, share x GPUs) wins. Inside the node: the first fully
free GPUs, or for a share the fitting GPU with the least free share.
Args: `maxCpu` (default 128000), `maxGpu` (default 8000). Range 0..100, integers (clipped on
nodes larger than `maxCpu` or `maxGpu`).
Fallback: none needed.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.plugins.baselines.best_fit import NormalizerArgs
from scheduler.plugins.common import first_fit_gpus, free_gpu_milli


class DotProduct(ScorePlugin, GpuChooser):
    name = "dot-product"

    Args = NormalizerArgs

    def __init__(self, args: NormalizerArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.max_cpu, self.max_gpu = args.max_cpu, args.max_gpu

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        gpu_req = pod.milli_per_gpu * pod.gpus_needed if pod.wants_gpu else 0
        dot = 0.0 + (snap.cpu_free[nodes] / self.max_cpu) * (pod.cpu_milli / self.max_cpu)
        dot = dot + (free_gpu_milli(snap, nodes) / self.max_gpu) * (gpu_req / self.max_gpu)
        return np.clip(np.trunc(100.0 * (1.0 - dot / 2.0)), 0.0, 100.0)  # nodes beyond maxCpu/maxGpu

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        return first_fit_gpus(cycle, node)
