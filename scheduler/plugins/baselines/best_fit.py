"""best-fit (score): the node left with the least free CPU and GPU after placement (FGD paper's BestFit).

    raw   = int(100 * (1 - (0.5 * (cpu_free - cpu) / maxCpu + 0.5 * (gpu_free - gpu) / maxGpu)))
    score = (raw - min raw) * 100 // (max raw - min raw)     over the feasible nodes; 0 when all equal

cpu_free is the node's free milli-CPU, gpu_free its free milli-GPU summed over its GPUs, cpu and
gpu the pod's requests (milli-GPU: share x GPUs). The integer arithmetic and the min-max
normalisation across the candidates are the paper simulator's, so that ties (broken by node order)
fall where they fell there. Inside the node: the first fully free GPUs, or for a share the fitting
GPU with the least free share. Args: `maxCpu` (default 128000 milli-CPU), `maxGpu` (default 8000
milli-GPU), `cpuWeight` / `gpuWeight` (default 0.5 each). Range 0..100, integers.
Fallback: none needed (free CPU and GPU are always known).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.plugins.common import first_fit_gpus, free_gpu_milli


def int_minmax(raw: np.ndarray) -> np.ndarray:
    """Integer min-max to 0..100 (Go's int64 arithmetic); all-equal values become 0."""
    if raw.size == 0:
        return raw.astype(np.float64)
    lo, hi = int(raw.min()), int(raw.max())
    if hi == lo:
        return np.zeros(raw.size)
    return ((raw.astype(np.int64) - lo) * 100 // (hi - lo)).astype(np.float64)


class NormalizerArgs(PluginArgs, frozen=True):
    """The FGD simulator's scale of a node: free CPU and GPU are divided by these."""

    max_cpu: Annotated[float, msgspec.Meta(gt=0)] = 128_000.0  # milli-CPU
    max_gpu: Annotated[float, msgspec.Meta(gt=0)] = 8_000.0  # milli-GPU


class BestFitArgs(NormalizerArgs, frozen=True):
    cpu_weight: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    gpu_weight: Annotated[float, msgspec.Meta(ge=0)] = 0.5


class BestFit(ScorePlugin, GpuChooser):
    name = "best-fit"
    Args = BestFitArgs

    def __init__(self, args: BestFitArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.max_cpu, self.max_gpu = args.max_cpu, args.max_gpu
        self.w_cpu, self.w_gpu = args.cpu_weight, args.gpu_weight

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        gpu_req = pod.milli_per_gpu * pod.gpus_needed if pod.wants_gpu else 0
        left = 0.0 + (snap.cpu_free[nodes] - pod.cpu_milli) / self.max_cpu * self.w_cpu
        left = left + (free_gpu_milli(snap, nodes) - gpu_req) / self.max_gpu * self.w_gpu
        raw = np.trunc((1.0 - left) * 100.0).astype(np.int64)
        return int_minmax(raw)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        return first_fit_gpus(cycle, node)
