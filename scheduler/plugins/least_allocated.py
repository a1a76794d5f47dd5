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

from collections.abc import Mapping
from typing import Any

import numpy as np

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.plugins.common import NodeTable, free_gpu_milli

RESOURCES = ("cpu", "memory", "gpu")


def least_requested(requested: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    ok = (capacity > 0) & (requested <= capacity)
    return np.where(ok, (capacity - requested) * 100 // np.maximum(capacity, 1), 0)


class LeastAllocated(ScorePlugin):
    name = "least-allocated"

    def __init__(self, args: Mapping[str, Any], config: SchedulerConfig) -> None:
        super().__init__(args, config)
        raw = args.get("resources", [{"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}])
        self.resources: list[tuple[str, int]] = []
        for entry in raw if isinstance(raw, list) else [raw]:
            if not isinstance(entry, Mapping) or entry.get("name") not in RESOURCES:
                raise ConfigError(f"pluginArgs least-allocated.resources: {entry!r} (names: {', '.join(RESOURCES)})")
            weight = entry.get("weight", 1)
            if not isinstance(weight, int) or isinstance(weight, bool) or weight <= 0:
                raise ConfigError(
                    f"pluginArgs least-allocated.resources: weight of {entry['name']} must be a positive integer"
                )
            self.resources.append((str(entry["name"]), weight))
        if not self.resources:
            raise ConfigError("pluginArgs least-allocated.resources must name at least one resource")

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
