"""lora (score): put a LoRA pod beside its base model, on a node with its adapters cached.

    score = 100 * (b * serves_base + a * cached) / (b + a)

`serves_base` is 1 where the node runs a pod whose `gpusched.io/model` equals this pod's (a pod
serving the base model: any pod with that annotation that is not a training pod, as the snapshot's
`serving` index counts them) and the node has room for this pod's adapters there: the GPUs, or the
GPU share, the pod asks for are free, healthy and of an allowed model and memory (the same rules as
gpu-fit). Otherwise 0. Identities are compared exactly, revision included.
`cached` is the fraction of the pod's `gpusched.io/lora-adapters` (each counted once) that the
node's GPUNodeReport lists in its LoRA adapter cache.

Args: `baseWeight` (b, default 0.6), `adapterWeight` (a, default 0.4). Range 0..100.
Fallback: a pod without adapters scores 0 everywhere (neutral); a pod with adapters but no base model
is scored on its cached adapters alone; a node without a report has no adapter cache (0), but can
still be serving the base model, since that comes from the pods bound to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.core.snapshot import ClusterSnapshot


def _on_nodes(table: Mapping[int, int], snapshot: ClusterSnapshot, nodes: np.ndarray) -> np.ndarray:
    """Boolean over `nodes`: the node is a key of `table`."""
    mark = np.zeros(len(snapshot), dtype=bool)
    if table:
        mark[np.fromiter(table.keys(), dtype=np.intp, count=len(table))] = True
    return mark[nodes]


def serves_base(cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
    """Boolean over `nodes`: the node serves the pod's base model and has room for the pod."""
    snap, pod = cycle.snapshot, cycle.pod
    if not pod.model:
        return np.zeros(nodes.size, dtype=bool)
    serving = _on_nodes(snap.serving.get(pod.model, {}), snap, nodes)
    if not serving.any():
        return serving
    room = cycle.eligible(nodes).sum(axis=1) >= pod.gpus_needed
    return serving & room


def cached_fraction(cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
    """Share of the pod's adapters cached on each of `nodes`, 0..1."""
    snap = cycle.snapshot
    adapters = set(cycle.pod.lora_adapters)
    if not adapters:
        return np.zeros(nodes.size)
    have = np.zeros(nodes.size)
    for adapter in adapters:
        have += _on_nodes(snap.lora_adapters.get(adapter, {}), snap, nodes)
    return have / len(adapters)


class LoraArgs(PluginArgs, frozen=True):
    base_weight: Annotated[float, msgspec.Meta(ge=0)] = 0.6
    adapter_weight: Annotated[float, msgspec.Meta(ge=0)] = 0.4

    def __post_init__(self) -> None:
        if self.base_weight + self.adapter_weight <= 0:
            raise ValueError("baseWeight and adapterWeight must not both be 0")


class Lora(ScorePlugin):
    name = "lora"
    score_per_node = True

    Args = LoraArgs

    def __init__(self, args: LoraArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.base, self.adapter = args.base_weight, args.adapter_weight

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        if not cycle.pod.lora_adapters:
            return np.zeros(nodes.size)
        base = serves_base(cycle, nodes).astype(np.float64)
        cached = cached_fraction(cycle, nodes)
        return 100.0 * (self.base * base + self.adapter * cached) / (self.base + self.adapter)
