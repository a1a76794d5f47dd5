"""Per-node values of one pod shape, computed again only for the nodes whose occupancy changed.

A score that depends only on what the pod asks (its shape: GPUs, share, CPU, GPU memory, models)
and on the node's own occupancy, such as the fragmentation plugins', need not be computed over
every candidate for every pod: `ShapeCache.of(snapshot, owner)` keeps, in the snapshot's memo and
per shape, a value and a GPU for each node together with the snapshot's change count when they were
computed. `stale` names the candidates that changed since (ClusterSnapshot.changed_at), the only
ones to compute again. A replay places one pod per decision, so a decision computes a few nodes
rather than hundreds.

Values depend on `inputs` too (the fragmentation states, built again when the typical pods change):
other inputs, compared by identity, drop every shape. At most MAX_SHAPES shapes are kept (about
30 KB each on a 1,213-node trace); one more starts over.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable

import numpy as np

from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

MAX_SHAPES = 512


class ShapeValues:
    """One shape's value and GPU (-1: none, or left to the caller) per node, and when computed."""

    __slots__ = ("at", "gpu", "value")

    def __init__(self, n: int) -> None:
        self.value = np.zeros(n)
        self.gpu = np.full(n, -1, dtype=np.intp)
        self.at = np.full(n, -1, dtype=np.int64)  # the snapshot's change count then; -1: never

    def store(self, snapshot: ClusterSnapshot, nodes: np.ndarray, value: np.ndarray, gpu: np.ndarray) -> None:
        self.value[nodes] = value
        self.gpu[nodes] = gpu
        self.at[nodes] = snapshot.changes


class ShapeCache:
    """Shape key -> ShapeValues over one snapshot, for one owner (a plugin instance)."""

    def __init__(self) -> None:
        self.inputs: tuple[object, ...] = ()
        self.shapes: dict[Hashable, ShapeValues] = {}

    @staticmethod
    def of(snapshot: ClusterSnapshot, owner: object) -> ShapeCache:
        return snapshot.memo(("shape-cache", id(owner)), lambda _: ShapeCache())

    def stale(
        self, snapshot: ClusterSnapshot, key: Hashable, nodes: np.ndarray, inputs: tuple[object, ...]
    ) -> tuple[ShapeValues, np.ndarray]:
        """The shape's values, and the nodes of `nodes` whose values must be computed (and stored)."""
        if len(inputs) != len(self.inputs) or not all(map(operator.is_, inputs, self.inputs)):
            self.inputs = inputs
            self.shapes.clear()
        entry = self.shapes.get(key)
        if entry is None:
            if len(self.shapes) >= MAX_SHAPES:
                self.shapes.clear()
            entry = self.shapes[key] = ShapeValues(len(snapshot))
        return entry, nodes[entry.at[nodes] < snapshot.changed_at[nodes]]


def shape_key(pod: PodRequest) -> Hashable:
    """What a pod asks that such values may depend on."""
    return (pod.gpu_count, pod.gpu_milli, pod.cpu_milli, pod.gpu_memory, pod.gpu_models)
