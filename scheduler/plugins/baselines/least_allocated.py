"""least-allocated (score): kube-scheduler's NodeResourcesFit LeastAllocated strategy.

    per resource r:  s_r = (capacity_r - requested_r) * 100 // capacity_r   (0 if capacity is 0 or
                                                                            requested exceeds it)
    score = sum_r s_r * w_r // sum_r w_r

requested_r is what the node's pods request plus this pod, capacity_r the node's allocatable, in
integer arithmetic as kube-scheduler computes it. It spreads pods over the emptiest nodes: the
kube-default-like baseline of the simulator. Resources: `cpu` (milli-CPU), `memory` (bytes) and
`gpu` (milli-GPU: a whole GPU is 1000, a share its share).
Args: `resources` (list of {name, weight}; default cpu and memory with weight 1, as kube-scheduler).
Range 0..100, integers. Fallback: a resource a node has none of scores 0 on that node.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.core.node_table import NodeTable
from scheduler.plugins.common import free_gpu_milli


def least_requested(requested: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    ok = (capacity > 0) & (requested <= capacity)
    return np.where(ok, (capacity - requested) * 100 // np.maximum(capacity, 1), 0)


class ResourceWeight(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Literal["cpu", "memory", "gpu"]
    weight: Annotated[int, msgspec.Meta(gt=0)] = 1


class LeastAllocatedArgs(PluginArgs, frozen=True):
    # kube-scheduler's default: cpu and memory, weight 1 each.
    resources: Annotated[tuple[ResourceWeight, ...], msgspec.Meta(min_length=1)] = (
        ResourceWeight("cpu"),
        ResourceWeight("memory"),
    )


class LeastAllocated(ScorePlugin):
    name = "least-allocated"

    Args = LeastAllocatedArgs

    def __init__(self, args: LeastAllocatedArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.resources = [(r.name, r.weight) for r in args.resources]

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        table = NodeTable.of(snap)
        total = np.zeros(nodes.size, dtype=np.int64)
        for name, weight in self.resources:
            if name == "cpu":
                cap, free, want = table.cpu[nodes], snap.cpu_free[nodes], pod.cpu_milli
            elif name == "memory":
                cap, free, want = table.memory[nodes], snap.memory_free[nodes], pod.memory
            else:
                cap, free = table.gpu_milli[nodes], free_gpu_milli(snap, nodes)
                want = pod.milli_per_gpu * pod.gpus_needed if pod.wants_gpu else 0
            total += least_requested(cap - free + want, cap) * weight
        return (total // sum(w for _, w in self.resources)).astype(np.float64)
