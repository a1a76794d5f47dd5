"""gpu-fit (filter): the node has enough usable GPUs for the pod.

A GPU is usable when it is valid, healthy, has the pod's share free (1000 milli for whole GPUs),
has at least `gpusched.io/gpu-memory` of memory, and is one of `gpusched.io/gpu-models` (as users write
them, "H100" or "H100-80GB" for "NVIDIA H100 80GB HBM3": scheduler/core/gpu_models.py). The node
must be Ready and schedulable, have `gpus_needed` usable GPUs, and have that many whole GPUs left
of its allocatable count (what kube-scheduler counts). GPUs reserved for a gang are held in the
snapshot like any other, so they are not usable.
A MIG-enabled GPU is never usable by a whole-GPU or share pod (the reason counts such GPUs). A pod
that asks for `nvidia.com/mig-<profile>` instead needs that many free MIG instances of the profile
on the node (free: on a healthy GPU, held by no pod per the report or the snapshot).
Fallback: a node without a GPUNodeReport has anonymous GPUs of unknown model and memory, so a pod
that names a model or a memory floor does not fit it (the reason says so); it has no known MIG
instances, so a MIG pod does not fit it either.
"""

from __future__ import annotations

import math

import numpy as np

from scheduler.core.framework import Cycle, FilterPlugin
from scheduler.core.quantity import format_bytes

# Odd multipliers for hashing a row of situation features (integer overflow wraps, as intended).
_ROW_HASH = np.random.default_rng(20261130).integers(1, 2**62, size=32, dtype=np.int64) | 1


class GpuFit(FilterPlugin):
    name = "gpu-fit"
    filter_per_node = True

    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        ok = snap.ready[nodes].copy()
        if pod.wants_mig:
            return ok & (snap.mig_free_of(pod.mig_profile)[nodes] >= pod.mig_count)
        if not pod.wants_gpu:
            return ok
        ok &= cycle.eligible_count(nodes) >= pod.gpus_needed
        ok &= snap.gpu_alloc[nodes] - snap.gpu_used_api[nodes] >= pod.gpu_count
        return ok

    def resolvable(self, cycle: Cycle, node: int) -> bool:
        """True when the node would fit the pod with every pod on it gone."""
        snap, pod = cycle.snapshot, cycle.pod
        if pod.wants_mig:
            return bool(snap.ready[node] and snap.mig_total_of(pod.mig_profile)[node] >= pod.mig_count)
        if not snap.ready[node] or snap.gpu_alloc[node] < pod.gpu_count:
            return False
        ok = snap.gpu_valid[node] & snap.gpu_healthy[node]
        if pod.gpu_memory:
            ok &= snap.gpu_memory[node] >= pod.gpu_memory
        if pod.gpu_models:
            ok &= np.isin(snap.gpu_model[node], snap.model_ids(pod.gpu_models))
        return int(ok.sum()) >= pod.gpus_needed

    def resolvable_nodes(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        if pod.wants_mig:
            return snap.ready[nodes] & (snap.mig_total_of(pod.mig_profile)[nodes] >= pod.mig_count)
        ok = snap.gpu_valid[nodes] & snap.gpu_healthy[nodes]
        if pod.gpu_memory:
            ok &= snap.gpu_memory[nodes] >= pod.gpu_memory
        if pod.gpu_models:
            ok &= np.isin(snap.gpu_model[nodes], snap.model_ids(pod.gpu_models))
        return snap.ready[nodes] & (snap.gpu_alloc[nodes] >= pod.gpu_count) & (ok.sum(axis=1) >= pod.gpus_needed)

    def reasons(self, cycle: Cycle, nodes: np.ndarray) -> list[str]:
        """Nodes in the same situation get the same words: each distinct situation (what `reason`
        reads of a node) is worded once, for its first node."""
        snap, pod = cycle.snapshot, cycle.pod
        usable = snap.gpu_valid[nodes] & snap.gpu_healthy[nodes]
        free = usable & (snap.gpu_milli_free[nodes] >= pod.milli_per_gpu)
        if pod.wants_mig:
            features = [
                snap.ready[nodes],
                snap.has_report[nodes],
                snap.mig_free_of(pod.mig_profile)[nodes],
                snap.mig_total_of(pod.mig_profile)[nodes],
                snap.gpu_mig[nodes].any(axis=1),
            ]
        else:
            free_memory = np.where(free, snap.gpu_memory[nodes], -1)  # -1: not free
            largest = free_memory.argmax(axis=1)  # the largest free GPU: the memory floor's reason names its model
            features = [
                snap.ready[nodes],
                snap.gpu_alloc[nodes],
                snap.gpu_alloc[nodes] - snap.gpu_used_api[nodes],
                free.sum(axis=1),
                np.where(usable, snap.gpu_milli_free[nodes], 0).max(axis=1),
                snap.has_report[nodes],
                cycle.eligible(nodes).sum(axis=1),
                np.maximum(free_memory.max(axis=1), 0),
                snap.gpu_mig[nodes].sum(axis=1),
                snap.gpu_model[nodes, largest],
            ]
        if pod.gpu_models:
            ids = snap.model_ids(pod.gpu_models)
            features.append((free & np.isin(snap.gpu_model[nodes], ids)).sum(axis=1))
            features.extend(np.where(free, snap.gpu_model[nodes], -9).T)  # which models are free
        table = np.column_stack([np.asarray(f, dtype=np.int64) for f in features])
        # Group equal rows: by a hash of each row (one sort of integers), checked exactly.
        weights = _ROW_HASH[: table.shape[1]] if table.shape[1] <= _ROW_HASH.size else None
        if weights is not None:
            _, first, group = np.unique(table @ weights, return_index=True, return_inverse=True)
            if not (table == table[first][group]).all():
                weights = None  # a collision: group the rows themselves
        if weights is None:
            _, first, group = np.unique(table, axis=0, return_index=True, return_inverse=True)
        worded = [self.reason(cycle, int(nodes[i])) for i in first]
        return [worded[g] for g in group.ravel().tolist()]

    def reason(self, cycle: Cycle, node: int) -> str:
        snap, pod = cycle.snapshot, cycle.pod
        if not snap.ready[node]:
            return "node is not Ready or is cordoned"
        if pod.wants_mig:
            return _mig_reason(cycle, node)
        left = int(snap.gpu_alloc[node] - snap.gpu_used_api[node])
        if left < pod.gpu_count:
            return f"needs {_gpus(pod.gpu_count)}, {max(left, 0)} of {int(snap.gpu_alloc[node])} allocatable left"
        row = np.array([node], dtype=np.intp)
        usable = snap.gpu_valid[node] & snap.gpu_healthy[node]
        free = usable & (snap.gpu_milli_free[node] >= pod.milli_per_gpu)
        what = f"a {pod.gpu_milli}/1000 share of a GPU" if pod.gpu_milli else _gpus(pod.gpus_needed)
        if free.sum() < pod.gpus_needed:
            mig = int(snap.gpu_mig[node].sum())
            # Why the GPUs a user sees on the node do not count: they are split into MIG instances.
            split = f"; {mig} MIG-enabled (whole-GPU pods cannot use them)" if mig else ""
            if pod.gpu_milli:
                best = int(snap.gpu_milli_free[node][usable].max(initial=0))
                return f"needs {what}, largest free share is {best}/1000{split}"
            return f"needs {what}, {int(free.sum())} free and healthy{split}"
        if pod.gpu_models:
            known = [snap.model_names[m] for m in set(snap.gpu_model[node][free].tolist()) if m >= 0]
            if not known:
                return f"needs GPU model {'|'.join(pod.gpu_models)}, model unknown (no GPUNodeReport)"
            in_model = free & np.isin(snap.gpu_model[node], snap.model_ids(pod.gpu_models))
            if in_model.sum() < pod.gpus_needed:
                return f"needs {what} of model {'|'.join(pod.gpu_models)}, node has {', '.join(sorted(known))}"
        if pod.gpu_memory:
            mem = snap.gpu_memory[node][free]
            if not snap.has_report[node] or not mem.any():
                return f"needs {format_bytes(pod.gpu_memory)} per GPU, GPU memory unknown (no GPUNodeReport)"
            enough = int((cycle.eligible(row)[0]).sum())
            largest = int(np.argmax(np.where(free, snap.gpu_memory[node], -1)))
            model = snap.model_names[snap.gpu_model[node, largest]] if snap.gpu_model[node, largest] >= 0 else "?"
            return (
                f"needs {what} with {format_bytes(pod.gpu_memory)} each, {enough} free have it"
                f" (largest {_gib_down(int(snap.gpu_memory[node, largest]))}, {model})"
            )
        return f"needs {what}, too few usable"


def _mig_reason(cycle: Cycle, node: int) -> str:
    snap, pod = cycle.snapshot, cycle.pod
    what = f"needs {pod.mig_count} x MIG {pod.mig_profile}"
    if not snap.has_report[node]:
        return f"{what}, MIG instances unknown (no GPUNodeReport)"
    free = int(snap.mig_free_of(pod.mig_profile)[node])
    total = int(snap.mig_total_of(pod.mig_profile)[node])
    if not total:
        return f"{what}, node has none" + ("" if snap.gpu_mig[node].any() else " (no MIG-enabled GPU)")
    return f"{what}, {free} free"


def _gib_down(size: int) -> str:
    """Bytes in GiB, rounded down to a tenth: a GPU just short of the floor never reads as meeting it
    (an "80GB" H100's 85,520,809,984 bytes are 79.6GiB)."""
    return f"{math.floor(size * 10 / 2**30) / 10:.1f}GiB"


def _gpus(count: int) -> str:
    return "1 GPU" if count == 1 else f"{count} GPUs"
