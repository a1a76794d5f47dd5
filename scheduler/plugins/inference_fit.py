"""inference-fit (filter and score): GPU memory for an inference replica, and replicas spread out.

Sizing. A replica needs its weights plus KV-cache room:

    need    = model bytes + kv     kv = `gpusched.io/kv-cache`, else kvCacheFraction * model bytes
    usable  = GPU memory * gpuMemoryUtilization                (the serving engine's own cap)
    per GPU = need / GPUs                                       (a share of a GPU: its share of usable)

Model bytes are `gpusched.io/model-bytes`, else the largest size any node reports for the pod's
`gpusched.io/model`. `replica_shape` gives the fewest GPUs of a given memory that hold a replica
(rounded up to a power of two, the tensor-parallel sizes serving engines accept) and the bytes each.

Filter: a node passes when at least as many of its GPUs as the pod requests (valid, healthy, of an
allowed model and at least `gpusched.io/gpu-memory`) each have `per GPU` usable, whether or not they
are free now (free GPUs are gpu-fit's business, so evicting pods never helps here). Otherwise the
reason reads "model needs 150.0GiB (125.0GiB weights + 25.0GiB KV cache) over 2 GPUs (75.0GiB each),
largest GPU 40.0GiB (36.0GiB usable at 90%)".

Score, out of two terms (each 0..1):

    shape  = GPUs the replica needs with this node's GPUs / GPUs the pod requests   (capped at 1)
    spread = sum_t w_t * (1 - c_t / max c_t) / sum_t w_t
    score  = 100 * (s * shape + p * spread) / (s + p)

`shape` disfavours splitting a model that fits one GPU: a 2-GPU pod whose replica fits one of this
node's GPUs scores 0.5 there, and 1 where its GPUs are small enough that the split is needed, which
keeps large GPUs for the models that need them. Pods of one GPU or a share score 1; a node whose
GPUs cannot hold the replica at the requested count scores 0. The GPUs used are those the pod would
get (the core's GPU set), else the node's largest.
`spread` spreads replicas of one controller (`PodRequest.owner`, within the namespace) across the
failure domains of `spreadTiers` (default zone, then rack: Topograph's leaf switch or GKE's
subblock, core/topology.py), outer tiers weighing twice the next one that is labelled: c_t
is how many of the controller's pods run in the node's domain of tier t, max over the scored nodes
(1 when no replica runs yet). A node without a tier's label is a domain of its own, and a tier no
node is labelled with is skipped (it would make every node a domain of its own). Spreading is a
modest term (p = 0.5 against s = 1, and the plugin's weight below the cache-locality signals), so
replicas still go where their image and weights are cached.

Args: `kvCacheFraction` (default 0.2), `gpuMemoryUtilization` (default 0.9), `powerOfTwo` (default
true), `spreadTiers` (node label keys, outermost first), `shapeWeight` (s, 1), `spreadWeight` (p, 0.5).
Range 0..100.
Fallback: training pods, pods without GPUs and pods whose model size is unknown pass the filter and
get no shape term; pods without an owner get no spread term; a pod with neither term scores 0 everywhere.
GPUs of unknown memory (no GPUNodeReport) pass the filter and count 0 in `shape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, FilterPlugin, ScorePlugin
from scheduler.core.quantity import format_bytes
from scheduler.core.snapshot import ClusterSnapshot, owner_key, tier_domains
from scheduler.core.topology import RACK_KEYS, ZONE
from scheduler.core.types import PodRequest

DEFAULT_SPREAD_TIERS = (ZONE, *RACK_KEYS)


def _gpus_for(need: np.ndarray | float, usable: np.ndarray | float, power_of_two: bool) -> np.ndarray:
    """Fewest GPUs of `usable` bytes that hold `need` bytes; 0 where `usable` is unknown (<= 0)."""
    need_a = np.asarray(need, dtype=np.float64)
    usable_a = np.asarray(usable, dtype=np.float64)
    count = np.ceil(np.divide(need_a, usable_a, out=np.zeros(np.broadcast(need_a, usable_a).shape), where=usable_a > 0))
    count = np.maximum(count, 1.0)
    if power_of_two:
        count = 2.0 ** np.ceil(np.log2(count))
    return np.where(usable_a > 0, count, 0.0)


def replica_shape(
    model_bytes: int, headroom: float, gpu_memory: int, *, utilization: float = 1.0, power_of_two: bool = True
) -> tuple[int, int]:
    """(GPUs, bytes per GPU) one replica needs on GPUs of `gpu_memory` bytes.

    The replica needs `model_bytes * (1 + headroom)` (headroom: the KV-cache fraction); each GPU offers
    `gpu_memory * utilization`. The count is rounded up to a power of two unless `power_of_two` is
    false. (0, bytes) when the GPU memory is unknown (<= 0); (0, 0) for a model of no size.
    """
    need = max(model_bytes, 0) * (1.0 + max(headroom, 0.0))
    if need <= 0:
        return 0, 0
    gpus = int(_gpus_for(need, gpu_memory * utilization, power_of_two))
    return gpus, math.ceil(need / gpus) if gpus else math.ceil(need)


def replica_bytes(snapshot: ClusterSnapshot, pod: PodRequest, kv_fraction: float) -> tuple[int, int]:
    """(weights bytes, KV-cache bytes) of one replica of the pod; (0, 0) when the model size is unknown."""
    weights = pod.model_bytes
    if not weights and pod.model:
        weights = largest_reported(snapshot, pod.model)
    if weights <= 0:
        return 0, 0
    kv = pod.kv_cache_bytes or math.ceil(weights * kv_fraction)
    return weights, kv


def largest_reported(snapshot: ClusterSnapshot, model: str) -> int:
    """The largest size any node reports for `model` (0: none), memoised until what nodes hold changes."""
    known: dict[str, tuple[int, int]] = snapshot.memo("largest-model-sizes", lambda _: {})
    catalog, size = known.get(model, (-1, 0))
    if catalog != snapshot.catalog:
        size = max(snapshot.models.get(model, {}).values(), default=0)
        known[model] = (snapshot.catalog, size)
    return int(size)


def labelled_tiers(snapshot: ClusterSnapshot, tiers: Sequence[str]) -> list[tuple[int, int]]:
    """(column, number of domains) of each tier some node is labelled with (memoised): a tier
    nobody labels says nothing about failure domains."""

    def build(snap: ClusterSnapshot) -> list[tuple[int, int]]:
        domains = domain_ids(snap, tiers)
        return [
            (t, int(domains[:, t].max()) + 1)
            for t, label in enumerate(tiers)
            if any(label in node.labels for node in snap.nodes)
        ]

    return snapshot.memo(("labelled-tiers", tuple(tiers)), build)


def domain_ids(snapshot: ClusterSnapshot, tiers: Sequence[str]) -> np.ndarray:
    """(N, T) failure-domain ids per node and tier, qualified by the outer tiers' values (memoised)."""
    key = tuple(tiers)
    return snapshot.memo(("tier-domains", key), lambda snap: tier_domains(snap.nodes, key))


Fraction = Annotated[float, msgspec.Meta(ge=0)]


class InferenceFitArgs(PluginArgs, frozen=True):
    kv_cache_fraction: Fraction = 0.2
    gpu_memory_utilization: Annotated[float, msgspec.Meta(ge=0.01, le=1)] = 0.9
    power_of_two: bool = True
    shape_weight: Fraction = 1.0
    spread_weight: Fraction = 0.5
    spread_tiers: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] = DEFAULT_SPREAD_TIERS


class InferenceFit(FilterPlugin, ScorePlugin):
    name = "inference-fit"
    filter_per_node = True  # sizing only
    values_per_node = True  # the shape term; spreading reads the replicas on other nodes

    Args = InferenceFitArgs

    def __init__(self, args: InferenceFitArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.kv_fraction = args.kv_cache_fraction
        self.utilization = args.gpu_memory_utilization
        self.power_of_two = args.power_of_two
        self.shape_weight = args.shape_weight
        self.spread_weight = args.spread_weight
        self.tiers = args.spread_tiers

    # ----------------------------------------------------------------- sizing
    def _sized(self, cycle: Cycle) -> tuple[int, int]:
        """(weights, KV bytes) when the pod is an inference replica of known size, else (0, 0)."""
        pod = cycle.pod
        if not pod.wants_gpu or pod.workload == "training":
            return 0, 0
        return replica_bytes(cycle.snapshot, pod, self.kv_fraction)

    def _usable(self, cycle: Cycle, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(GPUs that count, usable bytes on each for this pod) over `nodes`, regardless of what is free."""
        snap, pod = cycle.snapshot, cycle.pod
        ok = snap.gpu_valid[nodes] & snap.gpu_healthy[nodes]
        if pod.gpu_memory:
            ok &= snap.gpu_memory[nodes] >= pod.gpu_memory
        if pod.gpu_models:
            ok &= np.isin(snap.gpu_model[nodes], snap.model_ids(pod.gpu_models))
        usable = snap.gpu_memory[nodes] * self.utilization
        if pod.gpu_milli:
            usable = usable * (pod.gpu_milli / 1000.0)
        return ok, usable

    # ----------------------------------------------------------------- filter
    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        weights, kv = self._sized(cycle)
        if not weights:
            return np.ones(nodes.size, dtype=bool)
        k = cycle.pod.gpus_needed
        per_gpu = (weights + kv) / k
        ok, usable = self._usable(cycle, nodes)
        unknown = cycle.snapshot.gpu_memory[nodes] <= 0
        holds = ok & ((usable >= per_gpu) | unknown)
        return holds.sum(axis=1) >= k

    def reason(self, cycle: Cycle, node: int) -> str:
        pod = cycle.pod
        weights, kv = self._sized(cycle)
        k = pod.gpus_needed
        per_gpu = (weights + kv) / k
        row = np.array([node], dtype=np.intp)
        ok, usable = self._usable(cycle, row)
        memory = cycle.snapshot.gpu_memory[node][ok[0]]
        over = f"a {pod.gpu_milli}/1000 share of a GPU" if pod.gpu_milli else ("1 GPU" if k == 1 else f"{k} GPUs")
        text = (
            f"model needs {format_bytes(weights + kv)} ({format_bytes(weights)} weights + {format_bytes(kv)} KV cache)"
            f" over {over}"
        )
        if k > 1:
            text += f" ({format_bytes(per_gpu)} each)"
        if not memory.size:
            return text + ", node has no GPU that may serve it"
        largest = int(memory.max())
        holding = int((ok[0] & (usable[0] >= per_gpu)).sum())
        if holding:
            return text + f", only {holding} of the node's GPUs hold that (largest {format_bytes(largest)})"
        most = format_bytes(float(usable[0][ok[0]].max()))
        if pod.gpu_milli:
            usable_text = f" ({most} for the share at {self.utilization:.0%} usable)"
        elif self.utilization < 1.0:
            usable_text = f" ({most} usable at {self.utilization:.0%})"
        else:
            usable_text = ""
        return text + f", largest GPU {format_bytes(largest)}{usable_text}"

    # ------------------------------------------------------------------ score
    def shape(self, cycle: Cycle, nodes: np.ndarray, need: float) -> np.ndarray:
        """GPUs the replica needs on each node's GPUs / GPUs requested, 0..1 (0 where memory is unknown)."""
        pod = cycle.pod
        k = pod.gpus_needed
        ok, usable = self._usable(cycle, nodes)
        per_gpu = np.where(ok, usable, 0.0).max(axis=1)
        smallest = np.where(ok, usable, np.inf).min(axis=1)
        if (ok.any(axis=1) & (smallest < per_gpu)).any():
            # GPUs of several sizes on some node: the ones the pod would get decide (memoised per cycle).
            _, chosen = cycle.gpu_sets(nodes)
            rows = np.arange(nodes.size)[:, None]
            picked = np.where(chosen >= 0, usable[rows, np.maximum(chosen, 0)], np.inf).min(axis=1)
            per_gpu = np.where((chosen >= 0).all(axis=1) & np.isfinite(picked), picked, per_gpu)
        gpus = _gpus_for(need, per_gpu, self.power_of_two)
        fits = per_gpu * k >= need
        return np.where(fits, np.minimum(gpus / k, 1.0), 0.0)

    def spread(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """0..1: fewer of the controller's replicas in the node's failure domains is better."""
        snap = cycle.snapshot
        if not self.tiers:
            return np.ones(nodes.size)
        held = snap.owner_pods.get(owner_key(cycle.pod), {})
        if not held:
            return np.ones(nodes.size)
        where = np.fromiter(held.keys(), dtype=np.intp, count=len(held))
        counts = np.fromiter(held.values(), dtype=np.float64, count=len(held))
        domains = domain_ids(snap, self.tiers)
        total = np.zeros(nodes.size)
        weight_sum = 0.0
        for labelled, (t, size) in enumerate(labelled_tiers(snap, self.tiers)):
            weight = 0.5**labelled
            per_domain = np.bincount(domains[where, t], weights=counts, minlength=size)
            here = per_domain[domains[nodes, t]]
            top = float(here.max(initial=0.0))
            total += weight * (1.0 - here / top if top > 0 else 1.0)
            weight_sum += weight
        return total / weight_sum if weight_sum else np.ones(nodes.size)

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        return self.score_from(cycle, nodes, self.node_values(cycle, nodes))

    def node_values(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """The shape term per node (0 when the replica's size is unknown or the term weighs nothing)."""
        weights, kv = self._sized(cycle)
        if not (weights and self.shape_weight):
            return np.zeros(nodes.size)
        return self.shape(cycle, nodes, float(weights + kv))

    def score_from(self, cycle: Cycle, nodes: np.ndarray, values: np.ndarray) -> np.ndarray:
        weights, _ = self._sized(cycle)
        total = np.zeros(nodes.size)
        weight_sum = 0.0
        if weights and self.shape_weight:
            total += self.shape_weight * values
            weight_sum += self.shape_weight
        if cycle.pod.owner and self.spread_weight:
            total += self.spread_weight * self.spread(cycle, nodes)
            weight_sum += self.spread_weight
        if not weight_sum:
            return np.zeros(nodes.size)
        return 100.0 * total / weight_sum
