"""Gang planning: all members of a pod group placed together or none at all.

`plan_gang` (pure) finds nodes for every rank: it spans the lowest network tier that can hold the
whole gang, and inside it descends tier by tier keeping consecutive ranks together (a node first,
then a rack), choosing at each level the group that leaves the fewest GPUs stranded. `GangManager`
(state, no I/O; the caller gives the time) turns plans into GPU reservations with a TTL: a gang's
GPUs are held from its first member's filter until every member is bound or the TTL passes, so two
gangs that cannot both fit never hold parts of each other's GPUs: one is planned whole, the other
waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from scheduler.core.framework import Framework
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

TIER_NAMES = {
    "topology.kubernetes.io/zone": "zone",
    "gpusched.io/block": "block",
    "gpusched.io/rack": "rack",
    "kubernetes.io/hostname": "node",
    "nvidia.com/gpu.clique": "NVLink domain",
}


def tier_name(key: str) -> str:
    return TIER_NAMES.get(key, key)


@dataclass(frozen=True, slots=True)
class Slot:
    rank: int
    node: str
    gpus: tuple[int, ...]
    path: str  # tier values outermost first, e.g. "zone-a/block-1/rack-2/node-7"


@dataclass(frozen=True, slots=True)
class GangPlan:
    size: int
    slots: tuple[Slot, ...]
    span: str  # the tier the plan stays within ("rack", "node", "cluster", ...)


@dataclass(frozen=True, slots=True)
class GangRefusal:
    reason: str
    best: int


def _path(snapshot: ClusterSnapshot, node: int) -> str:
    labels = snapshot.nodes[node].labels
    return "/".join(labels.get(key, "-") for key in snapshot.tier_keys)


def plan_gang(
    snapshot: ClusterSnapshot,
    framework: Framework,
    template: PodRequest,
    size: int,
    max_span: str | None = None,
    fixed: Sequence[tuple[int, int, tuple[int, ...]]] = (),
) -> GangPlan | GangRefusal:
    """Nodes and GPUs for `size` members shaped like `template`.

    `fixed` lists (rank, node index, GPUs) of members already bound: the plan keeps them and places the rest
    in the lowest tier group that holds them too. `max_span` is the outermost tier label key the
    gang may span (None: the whole cluster).
    """
    k = template.gpus_needed
    fixed_ranks = {rank for rank, _, _ in fixed}
    todo = [r for r in range(size) if r not in fixed_ranks]
    decision = framework.decide(snapshot, template)
    capacity = np.zeros(len(snapshot), dtype=np.int64)
    if decision.feasible.size:
        eligible = framework_eligible(snapshot, template, decision.feasible)
        per_node = eligible // max(k, 1)
        by_count = (snapshot.gpu_alloc[decision.feasible] - snapshot.gpu_used_api[decision.feasible]) // max(
            template.gpu_count, 1
        )
        capacity[decision.feasible] = np.minimum(per_node, by_count) if template.gpu_count else per_node
    score = np.zeros(len(snapshot))
    score[decision.feasible] = decision.total
    anchors = {node for _, node, _ in fixed}
    tiers = list(snapshot.tier_keys)
    outermost = tiers.index(max_span) if max_span in tiers else -1  # -1: the whole cluster
    need = len(todo)

    # Innermost tier first: the first tier with a group that holds the rest of the gang wins.
    best_seen = 0
    for level in range(len(tiers) - 1, -2, -1):
        if level < outermost:
            break
        ids = snapshot.tier_ids[:, level] if level >= 0 else np.zeros(len(snapshot), dtype=np.int64)
        groups = _groups(ids, capacity, anchors)
        if not groups:
            continue
        best_seen = max(best_seen, max(cap for _, cap, _ in groups))
        fitting = [g for g in groups if g[1] >= need]
        if not fitting:
            continue
        members = min(fitting, key=lambda g: (_leftover(snapshot, g[0], k, need), -score[g[0]].mean(), g[0][0]))[0]
        slots = _assign(snapshot, framework, template, members, capacity, todo, level + 1, score)
        slots += [Slot(rank, snapshot.names[node], gpus, _path(snapshot, node)) for rank, node, gpus in fixed]
        span = tier_name(tiers[level]) if level >= 0 else "cluster"
        return GangPlan(size, tuple(sorted(slots, key=lambda s: s.rank)), span)
    where = f"one {tier_name(max_span)}" if max_span in tiers else "the cluster"
    best = min(best_seen + len(fixed), size)
    shape = f"{k} GPUs" if k != 1 else "1 GPU"
    return GangRefusal(f"gang of {size} x {shape} does not fit in {where} (best: {best})", best)


def framework_eligible(snapshot: ClusterSnapshot, template: PodRequest, nodes: np.ndarray) -> np.ndarray:
    """Usable GPUs per node for the template (the same rule as the gpu-fit filter)."""
    from scheduler.core.gpusets import eligible_gpus

    counts: np.ndarray = eligible_gpus(snapshot, template, nodes).sum(axis=1)
    return counts


def _groups(ids: np.ndarray, capacity: np.ndarray, anchors: set[int]) -> list[tuple[np.ndarray, int, int]]:
    """(node indices, member capacity, group id) per group holding every anchor node."""
    out = []
    for gid in np.unique(ids):
        nodes = np.flatnonzero(ids == gid)
        if anchors and not anchors.issubset(set(nodes.tolist())):
            continue
        cap = int(capacity[nodes].sum())
        if cap > 0 or anchors:
            out.append((nodes, cap, int(gid)))
    return out


def _leftover(snapshot: ClusterSnapshot, nodes: np.ndarray, k: int, need: int) -> int:
    """Whole GPUs that stay free in the group after the gang: fewer means less stranding."""
    free = int(snapshot.gpu_free_count()[nodes].sum())
    return free - k * need


def _assign(
    snapshot: ClusterSnapshot,
    framework: Framework,
    template: PodRequest,
    nodes: np.ndarray,
    capacity: np.ndarray,
    ranks: list[int],
    level: int,
    score: np.ndarray,
) -> list[Slot]:
    """Give consecutive `ranks` to `nodes`, descending through the tiers below `level`."""
    if not ranks:
        return []
    if level >= len(snapshot.tier_keys):
        # Node level: order nodes by fewest free GPUs left after (best fit), then score, then name.
        order = sorted(nodes.tolist(), key=lambda n: (-int(capacity[n]), -score[n], n))
        return _fill_nodes(snapshot, framework, template, order, capacity, ranks)
    ids = snapshot.tier_ids[nodes, level]
    groups = []
    for gid in np.unique(ids):
        members = nodes[ids == gid]
        groups.append((members, int(capacity[members].sum())))
    need = len(ranks)
    fitting = [g for g in groups if g[1] >= need]
    if fitting:
        k = template.gpus_needed
        chosen = min(fitting, key=lambda g: (_leftover(snapshot, g[0], k, need), -score[g[0]].mean(), g[0][0]))
        return _assign(snapshot, framework, template, chosen[0], capacity, ranks, level + 1, score)
    # No single group holds the rest: take the biggest groups first so the gang spans the fewest.
    slots: list[Slot] = []
    rest = list(ranks)
    for members, cap in sorted(groups, key=lambda g: (-g[1], g[0][0])):
        if not rest or cap <= 0:
            continue
        take, rest = rest[:cap], rest[cap:]
        slots += _assign(snapshot, framework, template, members, capacity, take, level + 1, score)
    return slots


def _fill_nodes(
    snapshot: ClusterSnapshot,
    framework: Framework,
    template: PodRequest,
    order: list[int],
    capacity: np.ndarray,
    ranks: list[int],
) -> list[Slot]:
    slots: list[Slot] = []
    rest = list(ranks)
    probes: list[str] = []
    try:
        for node in order:
            for _ in range(int(capacity[node])):
                if not rest:
                    break
                gpus = framework.choose_gpus(snapshot, template, node)
                if len(gpus) != template.gpus_needed:
                    break
                rank = rest.pop(0)
                probe = replace(template, name=f"{template.name}~probe{rank}", node_name=snapshot.names[node])
                snapshot.place(probe, node, gpus)  # so the next rank on this node gets other GPUs
                probes.append(probe.key)
                slots.append(Slot(rank, snapshot.names[node], gpus, _path(snapshot, node)))
    finally:
        for key in probes:
            snapshot.remove(key)
    return slots


# ------------------------------------------------------------------------------- manager
@dataclass
class ActiveGang:
    namespace: str
    group: str
    plan: GangPlan
    expires_at: float
    bound: set[int] = field(default_factory=set)

    def reservation(self, slot: Slot, template: PodRequest) -> PodRequest:
        return replace(
            template,
            namespace=self.namespace,
            name=f"gang:{self.group}:{slot.rank}",
            uid="",
            node_name=slot.node,
            gpu_ids=slot.gpus,
            pod_group="",
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """A gang member's answer: its slot (node, GPUs, rank), or why it must wait."""

    slot: Slot | None
    error: str
    reservation_key: str = ""
    plan: GangPlan | None = None


class GangManager:
    """Plans and reservations of gangs, keyed by (namespace, pod group)."""

    def __init__(
        self,
        framework: Framework,
        ttl_s: float = 120.0,
        max_span: str | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.framework = framework
        self.ttl_s = ttl_s
        self.max_span = max_span
        self.on_change = on_change
        self.active: dict[tuple[str, str], tuple[ActiveGang, PodRequest]] = {}
        self.expired_total = 0
        self.placed_total = 0
        # Gangs whose reservation ran out while members were missing: no new reservation until all
        # members exist, so a gang that never completes cannot hold GPUs forever.
        self.lapsed: set[tuple[str, str]] = set()

    def reservations(self) -> list[PodRequest]:
        """Virtual pods (with node and GPUs) holding the GPUs of every planned, unbound member."""
        return [
            gang.reservation(slot, template)
            for gang, template in self.active.values()
            for slot in gang.plan.slots
            if slot.rank not in gang.bound
        ]

    def expire(self, now: float) -> int:
        gone = [key for key, (gang, _) in self.active.items() if gang.expires_at < now]
        for key in gone:
            del self.active[key]
            self.lapsed.add(key)
        if gone:
            self.expired_total += len(gone)
            self.on_change()
        return len(gone)

    def pending(self) -> int:
        return len(self.active)

    def admit(self, snapshot: ClusterSnapshot, pod: PodRequest, members: Sequence[PodRequest], now: float) -> Admission:
        """Plan the pod's gang if needed and return the pod's slot, or why it must wait."""
        if pod.min_member < 1:
            return Admission(None, f"gang {pod.pod_group}: pod has no gpusched.io/min-member annotation")
        key = (pod.namespace, pod.pod_group)
        self.expire(now)
        ranks = rank_members(members, pod.min_member)
        if pod.key not in ranks:
            return Admission(None, f"gang {pod.pod_group}: more than {pod.min_member} members, or rank out of range")
        rank = ranks[pod.key]
        present = sum(1 for m in members if m.key in ranks)
        entry = self.active.get(key)
        if entry is None and key in self.lapsed:
            if present < pod.min_member:
                return Admission(
                    None,
                    f"gang {pod.pod_group}: waiting for members ({present} of {pod.min_member} present);"
                    " its reservation expired, so no GPUs are held until all members exist",
                )
            self.lapsed.discard(key)
        if entry is None:
            template = replace(pod, rank=None, node_name="", gpu_ids=(), name=f"{pod.pod_group}-member")
            fixed = [
                (ranks[m.key], snapshot.index[m.node_name], snapshot.placements[m.key].gpus)
                for m in members
                if m.node_name in snapshot.index and m.key in ranks and m.key in snapshot.placements
            ]
            result = plan_gang(snapshot, self.framework, template, pod.min_member, self.max_span, fixed)
            if isinstance(result, GangRefusal):
                return Admission(None, result.reason)
            gang = ActiveGang(pod.namespace, pod.pod_group, result, now + self.ttl_s, bound={r for r, _, _ in fixed})
            self.active[key] = (gang, template)
            for slot in result.slots:
                if slot.rank not in gang.bound:
                    snapshot.place(gang.reservation(slot, template), snapshot.index[slot.node], slot.gpus)
            self.on_change()
            entry = (gang, template)
        gang, template = entry
        slot = next(s for s in gang.plan.slots if s.rank == rank)
        if present < pod.min_member:
            return Admission(
                None,
                f"gang {pod.pod_group}: waiting for members ({present} of {pod.min_member} present);"
                f" GPUs reserved for {max(gang.expires_at - now, 0):.0f}s more",
            )
        res_key = gang.reservation(slot, template).key
        return Admission(slot, "", res_key, gang.plan)

    def release(self, namespace: str, group: str) -> None:
        if self.active.pop((namespace, group), None) is not None:
            self.on_change()

    def bound(self, pod: PodRequest, rank: int) -> None:
        """A member was bound: its reservation is over; the gang is done once all are."""
        key = (pod.namespace, pod.pod_group)
        entry = self.active.get(key)
        if entry is None:
            return
        gang, _ = entry
        gang.bound.add(rank)
        if len(gang.bound) >= gang.plan.size:
            del self.active[key]
            self.placed_total += 1
        self.on_change()


def rank_members(members: Sequence[PodRequest], size: int) -> dict[str, int]:
    """Pod key -> rank: declared ranks first, the rest by name into the free ranks below `size`."""
    ranks: dict[str, int] = {}
    taken: set[int] = set()
    for m in sorted(members, key=lambda m: m.name):
        if m.rank is not None and 0 <= m.rank < size and m.rank not in taken:
            ranks[m.key] = m.rank
            taken.add(m.rank)
    free = iter(r for r in range(size) if r not in taken)
    for m in sorted(members, key=lambda m: m.name):
        if m.key not in ranks and m.rank is None:
            r = next(free, None)
            if r is not None:
                ranks[m.key] = r
    return ranks
