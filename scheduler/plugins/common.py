"""Helpers shared by several plugins (not a plugin): free GPU sums and GPU choices.

The GPU choosers give the placement rules that the trace policies of the FGD paper use inside a
node: the first fully free GPUs for whole-GPU pods, and for a GPU share the fitting GPU with the
least free share (best fit), first on ties.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot


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
