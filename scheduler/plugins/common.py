"""Helpers shared by several plugins (not a plugin): per-snapshot node tables and GPU choices.

`NodeTable.of(snapshot)` builds, once per snapshot, what the snapshot keeps only on its NodeState
objects (allocatable CPU and memory, GPU capacity in milli-GPU, each node's single GPU model) and is
then reused by every cycle on that snapshot. The GPU choosers give the placement rules that the
trace policies of the FGD paper use inside a node: the first fully free GPUs for whole-GPU pods,
and for a GPU share the fitting GPU with the least free share (best fit), first on ties.
"""

from __future__ import annotations

import weakref
from typing import ClassVar

import numpy as np

from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot

MILLI = 1000
MIXED_MODELS = -3  # node_model value of a node whose GPUs are of more than one model


class NodeTable:
    """Static per-node arrays derived from a snapshot's NodeStates."""

    _cache: ClassVar[weakref.WeakKeyDictionary[ClusterSnapshot, NodeTable]] = weakref.WeakKeyDictionary()

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
        # First-fit order: nodes with the smallest GPUs first (GPU memory, unknown counting as 0),
        # then the snapshot's order; rank 0 comes first.
        memory = np.where(usable, snapshot.gpu_memory, 0).max(axis=1)
        order = np.lexsort((np.arange(len(snapshot)), memory))
        self.fill_rank = np.empty(len(snapshot), dtype=np.int64)
        self.fill_rank[order] = np.arange(len(snapshot))

    @classmethod
    def of(cls, snapshot: ClusterSnapshot) -> NodeTable:
        table = cls._cache.get(snapshot)
        if table is None:
            table = cls(snapshot)
            cls._cache[snapshot] = table
        return table


def free_gpu_milli(snapshot: ClusterSnapshot, nodes: np.ndarray) -> np.ndarray:
    """Free milli-GPU summed over each node's valid, healthy GPUs."""
    usable = snapshot.gpu_valid[nodes] & snapshot.gpu_healthy[nodes]
    return np.where(usable, snapshot.gpu_milli_free[nodes], 0).sum(axis=1).astype(np.int64)


def first_fit_gpus(cycle: Cycle, node: int) -> tuple[int, ...]:
    """Whole GPUs: the first fully free eligible ones. A share: best fit, first on ties."""
    pod = cycle.pod
    eligible = cycle.eligible(np.array([node], dtype=np.intp))[0]
    if pod.gpus_needed == 0:
        return ()
    if pod.gpu_milli:
        free = np.where(eligible, cycle.snapshot.gpu_milli_free[node], np.iinfo(np.int32).max)
        return (int(np.argmin(free)),) if eligible.any() else ()
    return tuple(int(j) for j in np.flatnonzero(eligible)[: pod.gpus_needed])
