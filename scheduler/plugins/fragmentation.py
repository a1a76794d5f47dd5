"""fragmentation (score): place the pod where it destroys the least GPU that the next pods could use.

Typical pods. The most common request shapes (CPU, GPU count, share per GPU, allowed GPU models),
taken in order of popularity until they cover `coverage` of the pods, each weighted by its count
w_t (FGD, Weng et al., "Beware of Fragmentation", USENIX ATC 2023). A CPU-only typical pod uses no
GPU, so for it every free milli-GPU of a node is fragment.

Two measures of a node, both in milli-GPU, sums over t weighted by w_t / sum w_t:

* FGD's (the `fgd` plugin): frag_t = the free milli-GPU on the node's GPUs too small (or of a
  model not allowed) for t's share if one t fits the node (its CPU, and `gpus` such GPUs), else all
  of the node's free milli-GPU.
* Multi-copy (this plugin): frag_t = free milli-GPU - what copies of t could take:
  copies_t = min(floor(slots_t / gpus_t), floor(CPU free / cpu_t)), slots_t = sum over the allowed
  GPUs of floor(free / share_t), and copies take copies_t * gpus_t * share_t.

Why multi-copy. FGD asks whether one more t fits. It counts a fully free GPU as wholly usable by an
810-milli share although 190 milli of it will be stranded, and a node with eight free GPUs as wholly
usable by 1-GPU pods of 16 CPUs even when its 48 free CPUs can run only three of them. Counting
copies charges a placement for the shares it makes unfillable and for the CPU it takes from GPUs
that then cannot be used: where a share fits exactly, where CPU-heavy pods go. On the Alibaba trace
it lowers the GPUs left unallocated on every bundled workload (`gpusched-sim fgd-table`).

Score. delta = frag(before) - frag(after placing the pod), exact: FGD scores
int(100 * sigmoid(delta / 1000)), which merges most nodes into ties that name order then breaks,
so FGD packs first-fit by accident. Here the packing is explicit and bounded:

    raw   = 50 + 50 * clip(delta / scale, -1, 1)
    order = 50 * packDelta / scale * (1 - rank / nodes)                      (first fit)
    score = 100 * (raw + order) / (100 + 50 * packDelta / scale)

where rank is the node's place in a fixed first-fit order: the smallest GPUs (memory) first, then
snapshot order. A node earlier in that order wins only against placements within `packDelta`
milli-GPU of fragmentation (default 240), which keeps later nodes whole for large pods and gangs.
For a GPU share every fitting GPU is tried and the best kept (on ties the one with the least free
share, then the first); `choose_gpus` hands that GPU to bind. Whole GPUs are left to the core's GPU
sets (NVLink quality): on a node of one GPU model, which free GPUs go changes neither measure.

In gpusched's default policy (scheduler/core/config.py) this plugin has weight 4: a delta of one GPU
(1000 milli) moves the total about as much as cold-start, NVLink or locality do between a good and a
poor node, and gpu-memory-packing's node-count term, which this measure replaces, is off.

Args: `typicalPods` (list of {cpu: milli-CPU, gpus, gpuMilli (per GPU, 1000 = whole), models,
weight}), `coverage` (default 0.95), `scale` (milli-GPU, default 1000), `packDelta` (milli-GPU,
default 240; 0 turns first fit off). Range 0..100.
Fallback: without `typicalPods` the typical pods come from the pods the snapshot holds (for the
extender: the pods running in the cluster), derived again whenever their number has halved or
doubled; with no GPU pod among them, one whole GPU is the typical pod. Before and after are summed
the same way, term by term, so a placement that changes nothing has a delta of exactly 0.
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
        self.elig: np.ndarray = elig  # (U, N, G): GPUs that may host each class
        # Counts are small whole numbers: float32 is exact for them and halves the arrays' size.
        self.count_type = np.float32 if copies else np.int64
        self.node_ok: np.ndarray = np.asarray(elig.any(axis=2).T, dtype=self.count_type)  # (N, U)
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
        self.t_gpus = np.array([p.gpus for p, _ in gpu_pods], dtype=np.float32)
        self.t_multi = np.flatnonzero(self.t_gpus > 1)
        self.t_cpu = np.array([p.cpu_milli if p.cpu_milli > 0 else np.inf for p, _ in gpu_pods], dtype=np.float32)
        # Per copy: weight x GPUs x share, rounded once to float32 (a constant per typical pod, so a
        # placement that changes nothing still has a delta of exactly 0); summed in float64.
        self.t_value = np.array([w * p.gpus * p.milli for p, w in gpu_pods], dtype=np.float32)
        self.t_value64 = self.t_value.astype(np.float64)
        slots_per_gpu = MILLI // np.maximum(self.class_milli, 1) if copies else np.ones(u_count, dtype=np.int64)
        self.whole_slots = slots_per_gpu.astype(self.count_type)
        n = len(snapshot)
        self.free = np.full_like(snapshot.gpu_milli_free, -1)
        self.cpu = np.full(n, -1, dtype=np.int64)
        self.count = np.zeros((n, u_count), dtype=self.count_type)
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
        gpu_changed = np.flatnonzero(self.free != snap.gpu_milli_free)  # flat (node, GPU) indices
        cpu_changed = np.flatnonzero(self.cpu != snap.cpu_free)
        if gpu_changed.size == 0 and cpu_changed.size == 0:
            return
        if gpu_changed.size + cpu_changed.size <= 64:  # usually one node: a set beats sorting
            rows = {*(gpu_changed // self.free.shape[1]).tolist(), *cpu_changed.tolist()}
            changed = np.fromiter(sorted(rows), dtype=np.intp, count=len(rows))
        else:
            changed = np.union1d(gpu_changed // self.free.shape[1], cpu_changed)
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
        self.frag[changed] = self.measure(
            self.total[changed], self.cpu[changed], self.count[changed], self.sum_ge[changed]
        )

    def measure(self, total: np.ndarray, cpu: np.ndarray, count: np.ndarray, sum_ge: np.ndarray | None) -> np.ndarray:
        """Fragmentation x w_all from per-node totals; rows are nodes or candidate placements."""
        if self.copies:
            copies = count[:, self.t_class]  # copies the GPUs take (rows, T)
            if self.t_multi.size:
                copies[:, self.t_multi] = np.floor(copies[:, self.t_multi] / self.t_gpus[self.t_multi])
            by_cpu = cpu.astype(np.float32)[:, None] / self.t_cpu  # copies the CPU takes
            np.minimum(copies, np.floor(by_cpu, out=by_cpu), out=copies)
            # Whole numbers below 2**53 in float64: the sum is exact whatever the order BLAS takes.
            return self.w_all * total - copies.astype(np.float64) @ self.t_value64
        assert sum_ge is not None
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
                d_count = (np.maximum(after, 0) // per - f // per).astype(self.count_type)
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
            # Over most nodes, reuse the mask the filter computed for all of them (memoised).
            eligible = cycle.eligible(everywhere)[nodes] if nodes.size * 4 >= everywhere.size else cycle.eligible(nodes)
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
            on: np.ndarray = self.elig[:, node, gpu].T.astype(self.count_type) if self.any_mixed else self.node_ok[node]
            count = self.count[node] + d_count[f] * on
            sum_ge = None if self.copies else self.sum_ge[node] + d_sum[f] * on
            after = self.measure(self.total[node] - pod.gpu_milli, cpu[pos], count, sum_ge)
            return pos, gpu, self.frag[node] - after
        pos = np.arange(nodes.size)
        gpu = np.full(nodes.size, -1)
        k = pod.gpu_count
        if k == 0:
            after = self.measure(self.total[nodes], cpu, self.count[nodes], None if self.copies else self.sum_ge[nodes])
            return pos, gpu, self.frag[nodes] - after
        taken = k * self.node_ok[nodes]
        if self.any_mixed:
            for row in np.flatnonzero(self.mixed[nodes]):
                at = int(nodes[row])
                fitting = np.flatnonzero(cycle.eligible(np.array([at], dtype=np.intp))[0])[:k]
                taken[row] = self.elig[:, at, fitting].sum(axis=1)
        count = self.count[nodes] - taken * self.whole_slots
        sum_ge = None if self.copies else self.sum_ge[nodes] - MILLI * taken
        after = self.measure(self.total[nodes] - MILLI * k, cpu, count, sum_ge)
        return pos, gpu, self.frag[nodes] - after


def best_per_node(pos: np.ndarray, values: np.ndarray, n: int, floor: float) -> np.ndarray:
    """Max of `values` per node position (rows sorted by position); `floor` where a node has none."""
    if pos.size == n and (n == 0 or pos[-1] == n - 1):  # one row per node, in order
        return np.asarray(values, dtype=np.float64)
    out = np.full(n, floor, dtype=np.float64)
    if pos.size:
        starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
        out[pos[starts]] = np.maximum.reduceat(values, starts)
    return out


class TypicalPodsSource:
    """Typical pods from args, else derived from a snapshot's pods (re-derived as they change)."""

    def __init__(self, args: Mapping[str, Any], copies: bool = False) -> None:
        self.copies = copies
        self.coverage = number_arg(args, "coverage", 0.95)
        if not 0 < self.coverage <= 1:
            raise ConfigError("pluginArgs coverage must be in (0, 1]")
        self.fixed = typical_from_args(args["typicalPods"]) if "typicalPods" in args else None
        self._states: weakref.WeakKeyDictionary[
            ClusterSnapshot, tuple[tuple[TypicalPod, ...], FragmentationState]
        ] = weakref.WeakKeyDictionary()
        self._derived: tuple[int, tuple[TypicalPod, ...]] | None = None

    def state(self, snapshot: ClusterSnapshot) -> FragmentationState:
        held = self._states.get(snapshot)
        pods = self.typical(snapshot)
        if held is not None and held[0] is pods:
            return held[1]
        state = FragmentationState(snapshot, pods, self.copies)
        self._states[snapshot] = (pods, state)
        return state

    def typical(self, snapshot: ClusterSnapshot) -> tuple[TypicalPod, ...]:
        """The configured typical pods, or those of the snapshot's pods, derived again (for this
        or any later snapshot) only once their number has halved or doubled."""
        if self.fixed is not None:
            return self.fixed
        count = len(snapshot.pods)
        if self._derived is None or not self._derived[0] // 2 <= count <= 2 * self._derived[0] + 1:
            pods = typical_pods(map(shape_of, snapshot.pods.values()), self.coverage)
            if not any(p.gpus for p in pods):
                pods = (*pods, TypicalPod(0, 1, MILLI))
            self._derived = (count, pods)
        return self._derived[1]


def number_arg(args: Mapping[str, Any], key: str, default: float) -> float:
    raw = args.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigError(f"pluginArgs {key} must be a number, not {raw!r}")
    return float(raw)


class Fragmentation(ScorePlugin, GpuChooser):
    name = "fragmentation"

    def __init__(self, args: Mapping[str, Any], config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.source = TypicalPodsSource(args, copies=True)
        self.scale = number_arg(args, "scale", 1000.0)
        self.pack_delta = number_arg(args, "packDelta", 240.0)
        if self.scale <= 0 or self.pack_delta < 0:
            raise ConfigError("pluginArgs fragmentation: scale must be positive and packDelta not negative")
        self.order_span = 50.0 * self.pack_delta / self.scale

    def _scores(
        self, cycle: Cycle, nodes: np.ndarray, every_gpu: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self.source.state(cycle.snapshot)
        pos, gpu, delta = state.deltas(cycle, nodes, every_gpu)
        score = 50.0 + 50.0 * np.clip(delta / state.w_all / self.scale, -1.0, 1.0)
        if self.order_span:
            rank = NodeTable.of(cycle.snapshot).fill_rank[nodes[pos]]
            score += self.order_span * (1.0 - rank / len(cycle.snapshot))
        return pos, gpu, score * (100.0 / (100.0 + self.order_span))

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        pos, _, score = self._scores(cycle, nodes)
        return best_per_node(pos, score, nodes.size, 0.0)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return None
        _, gpu, score = self._scores(cycle, np.array([node], dtype=np.intp), every_gpu=True)
        if not gpu.size:
            return ()
        tied = gpu[score >= score.max() - 1e-9]  # equally good: the tightest fit, then the first
        return (int(tied[int(np.argmin(cycle.snapshot.gpu_milli_free[node, tied]))]),)
