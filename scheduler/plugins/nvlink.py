"""nvlink (score): how well connected the best free GPU set on the node is, for k >= 2 GPUs.

    score = 100 * mean over GPU pairs of the set of affinity(pair)

Affinity is 1.0 for NVLink/NVSwitch, 0.4 same PCIe switch, 0.35 several switches, 0.25 same host
bridge, 0.15 same NUMA node, 0.0 across sockets (types.LINK_AFFINITY). The set is the best one
among the pod's usable GPUs (core/gpusets.py), the set bind recommends in gpusched.io/gpu-ids.
The score picks the node; on it the device plugin's preferred allocation picks the devices, and
the agent's report corrects gpusched's view where they differ (core/gpu_assignment.py).
Pods of one GPU or a share score 100 everywhere (no pairs). Range 0..100.
Fallback: without a report the links are unknown and count as 0 (when no candidate has any
known link, every node scores 0 without searching the sets).
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle, ScorePlugin


class NvLink(ScorePlugin):
    name = "nvlink"
    score_per_node = True

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        if cycle.pod.gpus_needed < 2:
            return np.full(nodes.size, 100.0)
        if not cycle.snapshot.link_affinity[nodes].any():  # no known links anywhere: every set scores 0
            return np.zeros(nodes.size)
        quality, _ = cycle.gpu_sets(nodes)
        return 100.0 * np.maximum(quality, 0.0)
