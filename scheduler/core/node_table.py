"""Static per-node arrays that the snapshot keeps only on its NodeState objects.

`NodeTable.of(snapshot)` builds, once per snapshot (ClusterSnapshot.memo), the allocatable CPU and
memory, the usable GPUs and their capacity in milli-GPU, each node's single GPU model (or
MIXED_MODELS), its largest GPU memory and whether every usable GPU has that size, and a fixed
first-fit order, for the plugins and the fragmentation measure.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.snapshot import ClusterSnapshot

MILLI = 1000
MIXED_MODELS = -3  # node_model value of a node whose GPUs are of more than one model


class NodeTable:
    """Static per-node arrays derived from a snapshot's NodeStates."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.cpu = np.array([n.cpu_milli for n in snapshot.nodes], dtype=np.int64)
        self.memory = np.array([n.memory for n in snapshot.nodes], dtype=np.int64)
        usable = snapshot.gpu_valid & snapshot.gpu_healthy
        self.gpus = usable.sum(axis=1).astype(np.int64)
        self.gpu_milli = self.gpus * MILLI
        models = np.where(usable, snapshot.gpu_model, -1)
        first = models.max(axis=1)
        same = ((models == first[:, None]) | ~usable).all(axis=1)
        self.node_model = np.where(same, first, MIXED_MODELS)
        # The largest GPU memory among the usable GPUs (-1: none), and whether all have that size.
        self.gpu_memory_top = np.where(usable, snapshot.gpu_memory, -1).max(axis=1, initial=-1)
        low = np.where(usable, snapshot.gpu_memory, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
        self.one_gpu_memory = self.gpu_memory_top == low
        # First-fit order: nodes with the smallest GPUs first (GPU memory, unknown counting as 0),
        # then the snapshot's order; rank 0 comes first.
        memory = np.where(usable, snapshot.gpu_memory, 0).max(axis=1)
        order = np.lexsort((np.arange(len(snapshot)), memory))
        self.fill_rank = np.empty(len(snapshot), dtype=np.int64)
        self.fill_rank[order] = np.arange(len(snapshot))

    @classmethod
    def of(cls, snapshot: ClusterSnapshot) -> NodeTable:
        return snapshot.memo("node-table", cls)
