"""Fragmentation of GPU capacity: typical pods and the per-node measure, for plugins and simulator.

The measure is the core's, the scores built on it are the plugins' (`fragmentation`, gpusched's
own, and the `fgd` baseline), and the simulator reads it too. The formulas:

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

A FragmentationState lives in its snapshot's memo and refreshes only the nodes whose occupancy
changed since it last looked (ClusterSnapshot.changed_at).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.framework import Cycle
from scheduler.core.node_table import MILLI, MIXED_MODELS, NodeTable
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

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


class TypicalPodArg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """One entry of the `typicalPods` argument: milli-CPU, GPUs, share per GPU, models, weight."""

    cpu: Annotated[int, msgspec.Meta(ge=0)] = 0
    gpus: Annotated[int, msgspec.Meta(ge=0)] = 0
    gpu_milli: Annotated[int, msgspec.Meta(ge=0, le=MILLI)] | None = None  # default: whole GPUs
    models: tuple[str, ...] = ()
    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        if self.gpus > 1 and self.gpu_milli is not None and self.gpu_milli < MILLI:
            raise ValueError("a share of a GPU (gpuMilli below 1000) is for one GPU only")

    def typical(self) -> TypicalPod:
        milli = self.gpu_milli if self.gpu_milli is not None else (MILLI if self.gpus else 0)
        gpus = self.gpus if milli else 0
        return TypicalPod(self.cpu, gpus, milli if gpus else 0, tuple(sorted(self.models)), self.weight)


class TypicalPodsArgs(PluginArgs, frozen=True):
    """Arguments of the plugins that measure fragmentation: fixed typical pods, or the coverage
    of the pods to derive them from."""

    typical_pods: Annotated[tuple[TypicalPodArg, ...], msgspec.Meta(min_length=1)] | None = None
    coverage: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95

    def source(self, copies: bool) -> TypicalPodsSource:
        fixed = None if self.typical_pods is None else tuple(p.typical() for p in self.typical_pods)
        return TypicalPodsSource(fixed, self.coverage, copies)


def integer_weights(pods: Sequence[TypicalPod]) -> np.ndarray:
    weights = [p.weight for p in pods]
    if all(float(w).is_integer() for w in weights):
        return np.array(weights, dtype=np.int64)
    scale = 1_000_000 / sum(weights)
    return np.maximum(np.rint(np.array(weights) * scale), 1).astype(np.int64)


class FragmentationState:
    """The measure over one snapshot, updated only for the nodes whose occupancy changed.

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
        self.source_pods = pods  # as given, to tell when the typical pods were derived again
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
        usable = self.usable = snapshot.gpu_valid & snapshot.gpu_healthy
        elig = np.repeat(usable[None], u_count, axis=0)
        for (_, models), u in classes.items():
            if models:
                elig[u] &= np.isin(snapshot.gpu_model, snapshot.model_ids(models))
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
        self.t_cpu = np.array([max(p.cpu_milli, 1) for p, _ in gpu_pods], dtype=np.float32)
        self.t_no_cpu = np.flatnonzero([p.cpu_milli <= 0 for p, _ in gpu_pods])  # CPU puts no bound on copies
        # Per copy: weight x GPUs x share, rounded once to float32 (a constant per typical pod, so a
        # placement that changes nothing still has a delta of exactly 0); summed in float64.
        self.t_value = np.array([w * p.gpus * p.milli for p, w in gpu_pods], dtype=np.float32)
        self.t_value64 = self.t_value.astype(np.float64)
        slots_per_gpu = MILLI // np.maximum(self.class_milli, 1) if copies else np.ones(u_count, dtype=np.int64)
        self.whole_slots = slots_per_gpu.astype(self.count_type)
        self.share_of_class = self.class_milli[:, None, None]  # (U, 1, 1), against (U, rows, GPUs)
        self.slot_divisor = np.maximum(self.share_of_class, 1)
        n = len(snapshot)
        self.cpu = np.zeros(n, dtype=np.int64)
        self.count = np.zeros((n, u_count), dtype=self.count_type)
        self.sum_ge = np.zeros((n, u_count))
        self.total = np.zeros(n)
        self.frag = np.zeros(n)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.seen = snapshot.changes  # the snapshot's change count at the last refresh
        self._compute(np.arange(n, dtype=np.intp))

    # ------------------------------------------------------------ the measure
    def refresh(self) -> None:
        """Recompute the nodes whose occupancy changed since the last look."""
        snap = self.snapshot
        if snap.changes == self.seen:
            return
        changed = (snap.changed_at > self.seen).nonzero()[0]
        self.seen = snap.changes
        self._compute(changed)

    def _compute(self, nodes: np.ndarray) -> None:
        snap = self.snapshot
        # Usually the one node of the last placement: a slice indexes without copying.
        changed = slice(int(nodes[0]), int(nodes[0]) + 1) if nodes.size == 1 else nodes
        free = snap.gpu_milli_free[changed].astype(np.int64)
        if self.copies:
            slots = np.where(self.elig[:, changed], free[None] // self.slot_divisor, 0)  # (U, R, G)
            self.count[changed] = slots.sum(axis=2).T
        else:
            ge = (free[None] >= self.share_of_class) & self.elig[:, changed]  # (U, R, G)
            self.count[changed] = ge.sum(axis=2).T
            self.sum_ge[changed] = (ge * free[None]).sum(axis=2).T
        self.total[changed] = np.where(self.usable[changed], free, 0).sum(axis=1)
        self.cpu[changed] = snap.cpu_free[changed]
        self.frag[changed] = self.measure(
            self.total[changed], self.cpu[changed], self.count[changed], self.sum_ge[changed]
        )

    def measure(self, total: np.ndarray, cpu: np.ndarray, count: np.ndarray, sum_ge: np.ndarray | None) -> np.ndarray:
        """Fragmentation x w_all from per-node totals; rows are nodes or candidate placements."""
        if self.copies:
            copies = count.take(self.t_class, axis=1)  # copies the GPUs take (rows, T)
            if self.t_multi.size:
                copies[:, self.t_multi] = np.floor(copies[:, self.t_multi] / self.t_gpus[self.t_multi])
            by_cpu = cpu.astype(np.float32)[:, None] / self.t_cpu  # copies the CPU takes
            if self.t_no_cpu.size:
                by_cpu[:, self.t_no_cpu] = np.inf
            np.minimum(copies, np.floor(by_cpu, out=by_cpu), out=copies)
            # Whole numbers below 2**53 in float64 (matmul casts the float32 counts exactly): the sum
            # is exact whatever the order BLAS takes.
            return self.w_all * total - copies @ self.t_value64
        assert sum_ge is not None
        level = self.cpu_levels.searchsorted(cpu, side="right") * self.strides[1]
        # Counts below 0 come only from placements that do not fit (a plugin scored on a node too
        # small for the pod): clipped, so such a row reads a table cell of its own node, never another.
        cell = self.u_base + level[:, None] + np.clip(count, 0, self.max_count)
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

    def deltas(self, cycle: Cycle, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in `nodes`, GPU or -1, frag before - after, x w_all) per way to place the pod.

        A GPU share gives one row per fitting GPU; other pods one row per node. (Rows of 2-D arrays
        are gathered with `take`: several times faster than indexing with an array.)
        """
        self.refresh()
        pod = cycle.pod
        cpu = self.cpu[nodes] - pod.cpu_milli
        if pod.gpu_milli:
            pos, gpu = cycle.eligible(nodes).nonzero()
            node = nodes[pos]
            f = self.snapshot.gpu_milli_free[node, gpu]
            d_count, d_sum = self._share_tables(pod.gpu_milli)
            on: np.ndarray = (
                self.elig[:, node, gpu].T.astype(self.count_type) if self.any_mixed else self.node_ok.take(node, axis=0)
            )
            count = self.count.take(node, axis=0) + d_count.take(f, axis=0) * on
            sum_ge = None if self.copies else self.sum_ge.take(node, axis=0) + d_sum.take(f, axis=0) * on
            after = self.measure(self.total[node] - pod.gpu_milli, cpu[pos], count, sum_ge)
            return pos, gpu, self.frag[node] - after
        pos = np.arange(nodes.size)
        gpu = np.full(nodes.size, -1)
        k = pod.gpu_count
        taken = self.node_ok.take(nodes, axis=0)
        if k != 1:
            taken = k * taken
        for row in np.flatnonzero(self.mixed[nodes]) if k and self.any_mixed else ():
            at = int(nodes[row])
            fitting = np.flatnonzero(cycle.eligible(np.array([at], dtype=np.intp))[0])[:k]
            taken[row] = self.elig[:, at, fitting].sum(axis=1)
        count = self.count.take(nodes, axis=0) - taken * self.whole_slots
        sum_ge = None if self.copies else self.sum_ge.take(nodes, axis=0) - MILLI * taken
        after = self.measure(self.total[nodes] - MILLI * k, cpu, count, sum_ge)
        return pos, gpu, self.frag[nodes] - after


def best_per_node(
    pos: np.ndarray, gpu: np.ndarray, values: np.ndarray, n: int, g: int, free: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per node position 0..n-1, the largest of its rows' `values` (0 where it has none) and that
    row's GPU (-1 where none). Rows are (position, GPU 0..g-1), each pair at most once. Among rows
    within 1e-9 of the largest, the GPU with the least `free` (n, g) share wins when `free` is given,
    else the largest exactly; the first GPU on ties."""
    grid = np.full((n, g), -np.inf)
    grid[pos, gpu] = values
    best = grid.max(axis=1, initial=-np.inf)
    some = best > -np.inf
    if free is None:
        chosen = (grid >= best[:, None]).argmax(axis=1)
    else:
        near = grid >= (best - 1e-9)[:, None]
        chosen = np.where(near, free, np.iinfo(free.dtype).max).argmin(axis=1)
    return np.where(some, best, 0.0), np.where(some, chosen, -1)


def _empty_list(_: ClusterSnapshot) -> list[FragmentationState]:
    return []


class TypicalPodsSource:
    """Fixed typical pods, else derived from a snapshot's pods (re-derived as they change); one
    FragmentationState per snapshot (in its memo) for the current typical pods."""

    def __init__(self, fixed: Sequence[TypicalPod] | None = None, coverage: float = 0.95, copies: bool = False) -> None:
        self.copies = copies
        self.coverage = coverage
        self.fixed = None if fixed is None else tuple(fixed)
        self._derived: tuple[int, tuple[TypicalPod, ...]] | None = None
        self._memo_key = ("fragmentation-state", id(self))

    def state(self, snapshot: ClusterSnapshot) -> FragmentationState:
        pods = self.typical(snapshot)
        held: list[FragmentationState] = snapshot.memo(self._memo_key, _empty_list)
        if not held or held[0].source_pods is not pods:
            held[:] = [FragmentationState(snapshot, pods, self.copies)]
        return held[0]

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
