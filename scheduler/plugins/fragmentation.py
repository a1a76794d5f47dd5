"""fragmentation (score): place the pod where it leaves the fewest GPUs that the next pods cannot use.

The measure is the GPU fragmentation of FGD (Weng et al., "Beware of Fragmentation", USENIX ATC
2023). Typical pods are the most common request shapes (CPU, GPU count, share per GPU, allowed GPU
models), taken in order of popularity until they cover `coverage` of the pods, each weighted by its
popularity w_t. For one node and one typical pod t:

    frag_t = free milli-GPU on the GPUs that cannot host t's share    if t fits the node
           = all free milli-GPU of the node                           otherwise

where t fits when the node has t's CPU free and `gpus` GPUs of an allowed model with t's share free
(memory is ignored); a CPU-only typical pod never "fits" a GPU (the GPUs it leaves idle are idle).
frag(node) = sum_t w_t * frag_t / sum_t w_t, in milli-GPU. Sums are kept in integers (weights are
counts), so a placement that changes nothing scores a delta of exactly 0.

Score. delta = frag(node before) - frag(node after placing the pod), the same quantity FGD ranks by,
but kept exact: FGD truncates 100 * sigmoid(delta / 1000) to an integer, which merges most nodes into
ties broken by name order and saturates large deltas. Here

    score = 50 + 50 * delta / (1000 * gpus_needed)     (clipped to 0..100; 0 GPUs: 1000 milli)

and a second, smaller signal breaks ties that remain exact: `packWeight` (p, default 1) points go to
nodes whose free GPU share after placement is smallest, scaled so that it never outweighs a delta of
`packDelta` milli-GPU (default 10), so the node that would be fragmented least wins, and among
equals the fullest node (first-fit packing that leaves whole nodes free for large pods).
For a GPU share every fitting GPU is tried and the best kept; `choose_gpus` hands that GPU to bind.
Whole GPUs are left to the core's GPU sets (NVLink quality), which does not change the measure on a
node with one GPU model.

Args: `typicalPods` (list of {cpu: milli-CPU, gpus, gpuMilli (per GPU, 1000 = whole), models,
weight}), `coverage` (default 0.95), `packWeight`, `packDelta`.
Fallback: without `typicalPods`, the typical pods are derived from the pods the snapshot holds (the
extender: the pods running in the cluster), again whenever their number has grown or shrunk by half;
with no GPU pods at all, one whole GPU is the single typical pod. Range 0..100.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.common import MILLI, MIXED_MODELS, NodeTable

Shape = tuple[int, int, int, tuple[str, ...]]  # (cpu milli, GPUs occupied, milli per GPU, models)


@dataclass(frozen=True, slots=True)
class TypicalPod:
    cpu_milli: int
    gpus: int  # GPUs occupied; 0 for a CPU-only pod
    milli: int  # share of each GPU: 1000 whole, 1..999 a share, 0 CPU-only
    models: tuple[str, ...] = ()
    weight: float = 1.0  # popularity: a count, or any positive number

    @property
    def shape(self) -> Shape:
        return (self.cpu_milli, self.gpus, self.milli, self.models)


def shape_of(pod: PodRequest) -> Shape:
    milli = pod.milli_per_gpu if pod.wants_gpu else 0
    return (pod.cpu_milli, pod.gpus_needed, milli, tuple(sorted(pod.gpu_models)))


def typical_pods(shapes: Iterable[Shape], coverage: float = 0.95) -> tuple[TypicalPod, ...]:
    """The most popular shapes until they cover `coverage` of all, weighted by their counts.

    Equal counts are ordered by larger CPU, share, GPU count, then models, as the FGD simulator does.
    """
    counts = Counter(shapes)
    total = sum(counts.values())
    if not total:
        return ()
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0][0], kv[0][2], kv[0][1], kv[0][3]), reverse=True)
    chosen: list[TypicalPod] = []
    covered = 0
    for (cpu, gpus, milli, models), count in ranked:
        if covered >= coverage * total:
            break
        chosen.append(TypicalPod(cpu, gpus, milli, models, float(count)))
        covered += count
    return tuple(chosen)


def typical_from_args(raw: Any) -> tuple[TypicalPod, ...]:
    """`typicalPods` plugin arg -> TypicalPods; a malformed entry is a ConfigError naming it."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError("typicalPods must be a list of {cpu, gpus, gpuMilli, models, weight}")
    out = []
    for i, entry in enumerate(raw):
        try:
            if not isinstance(entry, Mapping):
                raise TypeError("not a mapping")
            gpus = int(entry.get("gpus", 0))
            milli = int(entry.get("gpuMilli", MILLI if gpus else 0))
            models = tuple(sorted(str(m) for m in entry.get("models") or ()))
            weight = float(entry.get("weight", 1.0))
            cpu = int(entry.get("cpu", 0))
            if gpus < 0 or not 0 <= milli <= MILLI or weight <= 0 or cpu < 0 or (gpus > 1 and milli < MILLI):
                raise ValueError("out of range")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"pluginArgs typicalPods[{i}]: {exc} ({entry!r})") from exc
        out.append(TypicalPod(cpu, gpus if milli else 0, milli if gpus else 0, models, weight))
    return tuple(out)


def integer_weights(pods: Sequence[TypicalPod]) -> np.ndarray:
    weights = [p.weight for p in pods]
    if all(float(w).is_integer() for w in weights):
        return np.array(weights, dtype=np.int64)
    scale = 1_000_000 / sum(weights)
    return np.maximum(np.rint(np.array(weights) * scale), 1).astype(np.int64)


class FragmentationState:
    """The measure over one snapshot, updated only for the nodes whose GPUs or CPU changed.

    Per node and class u of typical pods (one share and model set) it keeps count[u], the GPUs
    that can host u's share, and sum_ge[u], their free milli-GPU. FGD's measure is then

        frag x w_all = w_all * total free - sum_u sum_ge[u] * W[u](cpu free, count[u])

    where W[u] sums the weights of u's typical pods that fit that CPU and GPU count: a table
    looked up per node, so scoring a candidate is a few array operations over (candidates, U).
    With copies=True the measure is the multi-copy one of the module docstring and count[u] holds
    slots instead: sum over the eligible GPUs of floor(free / share). Values are whole numbers held
    in float64 (exact below 2**53), so sums do not depend on order.
    """

    def __init__(self, snapshot: ClusterSnapshot, pods: Sequence[TypicalPod], copies: bool = False) -> None:
        self.pods = tuple(pods) or (TypicalPod(0, 1, MILLI),)
        self.snapshot = snapshot
        self.copies = copies
        weights = integer_weights(self.pods)
        self.w_all = float(weights.sum())
        classes: dict[tuple[int, tuple[str, ...]], int] = {}
        gpu_pods = [(p, int(w)) for p, w in zip(self.pods, weights, strict=True) if p.gpus > 0]
        for p, _ in gpu_pods:
            classes.setdefault((p.milli, p.models), len(classes))
        self.class_milli = np.array([m for m, _ in classes], dtype=np.int64)
        u_count = len(classes)
        usable = snapshot.gpu_valid & snapshot.gpu_healthy
        elig = np.repeat(usable[None], u_count, axis=0)
        for (_, models), u in classes.items():
            if models:
                elig[u] &= np.isin(snapshot.gpu_model, [snapshot.model_id(m) for m in models])
        self.elig = elig  # (U, N, G): GPUs that may host each class
        self.node_ok = elig.any(axis=2).T.astype(np.int64)  # (N, U)
        self.mixed = NodeTable.of(snapshot).node_model == MIXED_MODELS
        self.any_mixed = bool(self.mixed.any())
        # FGD: W[u, cpu level, GPU count], the weight of u's typical pods that fit.
        self.cpu_levels = np.unique([p.cpu_milli for p, _ in gpu_pods]).astype(np.int64)
        self.max_count = snapshot.max_gpus
        table = np.zeros((u_count, self.cpu_levels.size + 1, self.max_count + 1))
        for p, w in gpu_pods:
            level = int(np.searchsorted(self.cpu_levels, p.cpu_milli)) + 1
            table[classes[(p.milli, p.models)], level:, p.gpus :] += w
        self.table = table.reshape(-1)  # flat: [u, level, count] -> u * strides[0] + ...
        self.strides = (table.shape[1] * table.shape[2], table.shape[2])
        self.u_base = (np.arange(u_count) * self.strides[0])[None, :]
        # Multi-copy: per typical pod its class, GPUs, CPU (0 -> unbounded) and weight x share x GPUs.
        self.t_class = np.array([classes[(p.milli, p.models)] for p, _ in gpu_pods], dtype=np.intp)
        self.t_gpus = np.array([p.gpus for p, _ in gpu_pods], dtype=np.float64)
        self.t_cpu = np.array([p.cpu_milli if p.cpu_milli > 0 else np.inf for p, _ in gpu_pods], dtype=np.float64)
        self.t_value = np.array([w * p.gpus * p.milli for p, w in gpu_pods], dtype=np.float64)
        self.whole_slots = (MILLI // np.maximum(self.class_milli, 1)) if copies else np.ones(u_count, dtype=np.int64)
        n = len(snapshot)
        self.free = np.full_like(snapshot.gpu_milli_free, -1)
        self.cpu = np.full(n, -1, dtype=np.int64)
        self.count = np.zeros((n, u_count), dtype=np.int64)
        self.sum_ge = np.zeros((n, u_count))
        self.total = np.zeros(n)
        self.frag = np.zeros(n)
        self.generation = 0
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.refresh()

    # ------------------------------------------------------------ the measure
    def refresh(self) -> None:
        """Recompute the nodes whose free GPU shares or CPU differ from the last look."""
        snap = self.snapshot
        changed = np.flatnonzero((self.free != snap.gpu_milli_free).any(axis=1) | (self.cpu != snap.cpu_free))
        if changed.size == 0:
            return
        self.generation += 1
        free = snap.gpu_milli_free[changed].astype(np.int64)
        milli = self.class_milli[:, None, None]
        if self.copies:
            slots = np.where(self.elig[:, changed], free[None] // np.maximum(milli, 1), 0)  # (U, R, G)
            self.count[changed] = slots.sum(axis=2).T
        else:
            ge = (free[None] >= milli) & self.elig[:, changed]  # (U, R, G)
            self.count[changed] = ge.sum(axis=2).T
            self.sum_ge[changed] = (ge * free[None]).sum(axis=2).T
        usable = snap.gpu_valid[changed] & snap.gpu_healthy[changed]
        self.total[changed] = np.where(usable, free, 0).sum(axis=1)
        self.free[changed] = snap.gpu_milli_free[changed]
        self.cpu[changed] = snap.cpu_free[changed]
        self.frag[changed] = self.measure(self.total[changed], self.cpu[changed], self.count[changed], self.sum_ge[changed])

    def measure(self, total: np.ndarray, cpu: np.ndarray, count: np.ndarray, sum_ge: np.ndarray) -> np.ndarray:
        """Fragmentation x w_all from per-node totals; rows are nodes or candidate placements."""
        if self.copies:
            by_gpu = count[:, self.t_class] // self.t_gpus  # copies the GPUs take  (rows, T)
            by_cpu = np.floor(cpu[:, None] / self.t_cpu)  # copies the CPU takes
            return self.w_all * total - np.minimum(by_gpu, by_cpu) @ self.t_value
        level = np.searchsorted(self.cpu_levels, cpu, side="right") * self.strides[1]
        cell = self.u_base + level[:, None] + np.minimum(count, self.max_count)
        return self.w_all * total - np.einsum("ij,ij->i", sum_ge, self.table[cell])

    def milli(self, nodes: np.ndarray) -> np.ndarray:
        """Fragmentation of the given nodes now, in milli-GPU."""
        self.refresh()
        return self.frag[nodes] / self.w_all

    # ------------------------------------------------------------ placements
    def _share_tables(self, milli: int) -> tuple[np.ndarray, np.ndarray]:
        """Per free share f (0..1000) of the GPU taken, the change in each class's count and sum."""
        if milli not in self._tables:
            f = np.arange(MILLI + 1, dtype=np.int64)[:, None]
            after = f - milli
            if self.copies:
                per = np.maximum(self.class_milli, 1)
                d_count = np.maximum(after, 0) // per - f // per
                d_sum = np.zeros(d_count.shape)
            else:
                was, stays = f >= self.class_milli, after >= self.class_milli
                d_count = -(was & ~stays).astype(np.int64)
                d_sum = (np.where(stays, after, 0) - np.where(was, f, 0)).astype(np.float64)
            self._tables[milli] = (d_count, d_sum)
        return self._tables[milli]

    def deltas(
        self, cycle: Cycle, nodes: np.ndarray, every_gpu: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in `nodes`, GPU or -1, frag before - after, x w_all) per way to place the pod.

        A GPU share gives one row per fitting GPU (every_gpu=True), or one per distinct free share
        on each node with GPU -1 (equal shares give equal fragmentation); other pods one row per
        node.
        """
        self.refresh()
        pod, snap = cycle.pod, self.snapshot
        cpu = self.cpu[nodes] - pod.cpu_milli
        if pod.gpu_milli:
            everywhere = np.arange(len(snap), dtype=np.intp)
            if nodes.size * 4 >= everywhere.size:  # the filter's mask over all nodes, memoised
                eligible = cycle.eligible(everywhere)[nodes]
            else:
                eligible = cycle.eligible(nodes)
            free = snap.gpu_milli_free[nodes]
            if every_gpu or self.any_mixed:
                pos, gpu = np.nonzero(eligible)
                f = free[pos, gpu]
            else:  # one row per distinct fitting share of a node: sort each row, keep changes
                shares = np.where(eligible, free, -1)
                shares.sort(axis=1)
                fresh = shares >= 0
                fresh[:, 1:] &= shares[:, 1:] != shares[:, :-1]
                pos, col = np.nonzero(fresh)
                f = shares[pos, col]
                gpu = np.full(pos.size, -1)
            node = nodes[pos]
            d_count, d_sum = self._share_tables(pod.gpu_milli)
            if self.any_mixed:
                on = self.elig[:, node, gpu].T.astype(np.int64)
            else:
                on = self.node_ok[node]
            count = self.count[node] + d_count[f] * on
            sum_ge = self.sum_ge[node] + d_sum[f] * on
            after = self.measure(self.total[node] - pod.gpu_milli, cpu[pos], count, sum_ge)
            return pos, gpu, self.frag[node] - after
        pos = np.arange(nodes.size)
        gpu = np.full(nodes.size, -1)
        k = pod.gpu_count
        if k == 0:
            after = self.measure(self.total[nodes], cpu, self.count[nodes], self.sum_ge[nodes])
            return pos, gpu, self.frag[nodes] - after
        taken = k * self.node_ok[nodes]
        if self.any_mixed:
            for row in np.flatnonzero(self.mixed[nodes]):
                node = int(nodes[row])
                eligible = cycle.eligible(np.array([node], dtype=np.intp))[0]
                taken[row] = self.elig[:, node, np.flatnonzero(eligible)[:k]].sum(axis=1)
        count = self.count[nodes] - taken * self.whole_slots
        sum_ge = self.sum_ge[nodes] - (0 if self.copies else MILLI) * taken
        after = self.measure(self.total[nodes] - MILLI * k, cpu, count, sum_ge)
        return pos, gpu, self.frag[nodes] - after


def best_per_node(pos: np.ndarray, values: np.ndarray, n: int, floor: float) -> np.ndarray:
    """Max of `values` per node position (rows are grouped by position); `floor` where none."""
    out = np.full(n, floor, dtype=np.float64)
    np.maximum.at(out, pos, values)
    return out


class TypicalPodsSource:
    """Typical pods from args, else derived from a snapshot's pods (re-derived as they change)."""

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.coverage = float(args.get("coverage", 0.95))
        if not 0 < self.coverage <= 1:
            raise ConfigError("pluginArgs coverage must be in (0, 1]")
        self.fixed = typical_from_args(args["typicalPods"]) if "typicalPods" in args else None
        self.copies = bool(args.get("copies", False))
        self.weight_by = str(args.get("weightBy", "pods"))
        if self.weight_by not in ("pods", "gpu"):
            raise ConfigError("pluginArgs weightBy must be pods or gpu")
        self._states: weakref.WeakKeyDictionary[ClusterSnapshot, tuple[int, FragmentationState]] = (
            weakref.WeakKeyDictionary()
        )

    def state(self, snapshot: ClusterSnapshot) -> FragmentationState:
        held = self._states.get(snapshot)
        count = len(snapshot.pods)
        if held is not None and (self.fixed is not None or held[0] // 2 <= count <= 2 * held[0] + 1):
            return held[1]
        if self.fixed is not None:
            pods = self.fixed
        else:
            pods = tuple(p for p in typical_pods(map(shape_of, snapshot.pods.values()), self.coverage))
            if not any(p.gpus for p in pods):
                pods = (*pods, TypicalPod(0, 1, MILLI))
        if self.weight_by == "gpu":
            pods = tuple(
                TypicalPod(p.cpu_milli, p.gpus, p.milli, p.models, p.weight * p.gpus * p.milli / MILLI)
                for p in pods
                if p.gpus
            )
        state = FragmentationState(snapshot, pods, self.copies)
        self._states[snapshot] = (count, state)
        return state


class Fragmentation(ScorePlugin, GpuChooser):
    name = "fragmentation"

    def __init__(self, args: Mapping[str, Any], config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.source = TypicalPodsSource(args)
        self.pack_weight = float(args.get("packWeight", 1.0))
        self.pack_delta = float(args.get("packDelta", 10.0))
        self.scale = args.get("scale")
        self.pack_by = str(args.get("packBy", "share"))
        self.clip = bool(args.get("clip", False))
        if self.pack_weight < 0 or self.pack_delta < 0:
            raise ConfigError("pluginArgs packWeight and packDelta must not be negative")

    def _scores(
        self, cycle: Cycle, nodes: np.ndarray, every_gpu: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self.source.state(cycle.snapshot)
        pod = cycle.pod
        pos, gpu, delta = state.deltas(cycle, nodes, every_gpu)
        if self.scale == "pod":
            scale = float(MILLI * max(pod.gpus_needed, 1))
        elif self.scale is None:
            scale = float(MILLI * cycle.snapshot.max_gpus)
        else:
            scale = float(self.scale)
        score = 50.0 + 50.0 * (delta / state.w_all) / scale
        if self.clip:
            score = np.clip(score, 0, 100)
        if self.pack_weight:
            table = NodeTable.of(cycle.snapshot)
            node = nodes[pos]
            used = pod.milli_per_gpu * pod.gpus_needed if pod.wants_gpu else 0
            if self.pack_by == "share":
                free_after = (state.total[node] - used) / np.maximum(table.gpu_milli[node], 1)
            elif self.pack_by == "milli":
                free_after = (state.total[node] - used) / (MILLI * cycle.snapshot.max_gpus)
            else:
                cpu = cycle.snapshot.cpu_free[node] - pod.cpu_milli
                free_after = 0.5 * (state.total[node] - used) / 8000 + 0.5 * cpu / 128000
            score = score + (50.0 * self.pack_delta / scale) * self.pack_weight * (1.0 - free_after)
        return pos, gpu, score

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        pos, _, score = self._scores(cycle, nodes)
        return best_per_node(pos, score, nodes.size, 0.0)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return None
        _, gpu, score = self._scores(cycle, np.array([node], dtype=np.intp), every_gpu=True)
        return (int(gpu[int(np.argmax(score))]),) if gpu.size else ()
