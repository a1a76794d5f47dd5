"""gpu-memory-packing (score): fill nodes and GPUs that fit snugly, keep big and empty ones free.

    score = 100 * (c * used_after + (1 - c) * memory_fit)

`used_after` is the share of the node's GPU capacity (in milli-GPU) in use once the pod is placed:
packing onto busy nodes leaves whole nodes free for gangs. `memory_fit` is requested memory per
GPU / memory of the GPUs the pod would get; without a request the smallest GPU memory among the
feasible nodes stands in, so an unconstrained pod takes a small GPU rather than an 80 GB one.
Arg `countWeight` (c, 0..1, default 0.5). Range 0..100.
Fallback: GPUs of unknown memory (no report) get memory_fit 0. Where every usable GPU of the
candidate nodes has one memory size per node, that size stands for the chosen set's without
searching the sets (the same value, found cheaply).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.core.node_table import NodeTable


class GpuMemoryPackingArgs(PluginArgs, frozen=True):
    count_weight: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5


class GpuMemoryPacking(ScorePlugin):
    name = "gpu-memory-packing"
    values_per_node = True  # the memory of the GPUs the pod would get; the score reads their minimum
    Args = GpuMemoryPackingArgs

    def __init__(self, args: GpuMemoryPackingArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.count_weight = args.count_weight

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        return self.score_from(cycle, nodes, self.node_values(cycle, nodes))

    def node_values(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """The smallest memory among the GPUs the pod would get, per node (0: none or unknown)."""
        if not cycle.pod.wants_gpu:
            return np.zeros(nodes.size)
        return self._chosen_memory(cycle, nodes)

    def score_from(self, cycle: Cycle, nodes: np.ndarray, values: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        if not pod.wants_gpu:
            return np.zeros(nodes.size)
        c = self.count_weight
        used_after: np.ndarray | float = 0.0
        if c:
            valid = snap.gpu_valid[nodes]
            capacity = np.maximum(valid.sum(axis=1) * 1000, 1)
            used = np.where(valid, 1000 - snap.gpu_milli_free[nodes], 0).sum(axis=1)
            used_after = (used + pod.milli_per_gpu * pod.gpus_needed) / capacity

        chosen_memory = values
        want = float(pod.gpu_memory)
        if not want:
            known = chosen_memory[chosen_memory > 0]
            want = float(known.min()) if known.size else 0.0
        fit = np.divide(want, chosen_memory, out=np.zeros(nodes.size), where=chosen_memory > 0)
        return 100.0 * (c * np.minimum(used_after, 1.0) + (1 - c) * np.minimum(fit, 1.0))

    @staticmethod
    def _chosen_memory(cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """Per node, the smallest memory among the GPUs the pod would get (0 when none or unknown).

        Where every usable GPU of every node has one memory size, that size is the answer whatever
        set is chosen, so the GPU sets are searched only when some node mixes sizes.
        """
        snap = cycle.snapshot
        table = NodeTable.of(snap)
        if nodes.size and bool(table.one_gpu_memory[nodes].all()):
            fits = cycle.eligible_count(nodes) >= cycle.pod.gpus_needed  # a set exists
            return np.where(fits, table.gpu_memory_top[nodes], 0).astype(np.float64)
        _, chosen = cycle.gpu_sets(nodes)
        held = np.where(chosen >= 0, snap.gpu_memory[nodes[:, None], np.maximum(chosen, 0)], 0)
        return np.where((chosen >= 0).all(axis=1), held.min(axis=1), 0).astype(np.float64)
