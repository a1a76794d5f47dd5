"""Gang planning: all members of a pod group placed together or none at all.

`plan_gang` (pure) finds nodes for every rank: it spans the lowest network tier that can hold the
whole gang, and inside it descends tier by tier keeping consecutive ranks together (a node first,
then a rack), choosing at each level the group that leaves the fewest GPUs stranded. `GangManager`
(state, no I/O; the caller gives the time) turns plans into GPU reservations with a TTL: a gang's
GPUs are held from the first member's filter (once every member exists) until every member is
bound, or until no member made progress for the TTL, so two gangs that cannot both fit never hold
parts of each other's GPUs: one is planned whole, the other waits. No member is bound until every
member has reached bind on its planned node; then all are bound together (see GangManager).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from scheduler.core.framework import Framework
from scheduler.core.gang_sources import size_unknown
from scheduler.core.snapshot import ClusterSnapshot, SnapshotError
from scheduler.core.types import PodRequest

TIER_NAMES = {
    "topology.kubernetes.io/zone": "zone",
    "network.topology.nvidia.com/core": "core switch",
    "network.topology.nvidia.com/spine": "spine switch",
    "network.topology.nvidia.com/leaf": "leaf switch",
    "network.topology.nvidia.com/accelerator": "NVLink domain",
    "cloud.google.com/gce-topology-block": "block",
    "cloud.google.com/gce-topology-subblock": "subblock",
    "cloud.google.com/gce-topology-host": "host",
    "nvidia.com/gpu.clique": "NVLink domain",
    "kubernetes.io/hostname": "node",
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
    candidates: np.ndarray | None = None,
) -> GangPlan | GangRefusal:
    """Nodes and GPUs for `size` members shaped like `template`.

    `fixed` lists (rank, node index, GPUs) of members already bound: the plan keeps them and places the rest
    in the lowest tier group that holds them too. `max_span` is the outermost tier label key the
    gang may span (None: the whole cluster). `candidates` are the only nodes the plan may use
    (the extender passes the nodes kube-scheduler's own filters let through: taints, nodeSelector,
    affinity); None: every node. A node holds as many members as its usable GPUs, its free CPU and
    its free memory allow.
    """
    k = template.gpus_needed
    fixed_ranks = {rank for rank, _, _ in fixed}
    todo = [r for r in range(size) if r not in fixed_ranks]
    decision = framework.decide(snapshot, template, candidates, explain=False, score=True)
    capacity = np.zeros(len(snapshot), dtype=np.int64)
    if decision.feasible.size:
        feasible = decision.feasible
        eligible = framework_eligible(snapshot, template, feasible)
        per_node = eligible // max(k, 1)
        if template.gpu_count:
            by_count = (snapshot.gpu_alloc[feasible] - snapshot.gpu_used_api[feasible]) // template.gpu_count
            per_node = np.minimum(per_node, by_count)
        if template.cpu_milli > 0:
            per_node = np.minimum(per_node, np.maximum(snapshot.cpu_free[feasible], 0) // template.cpu_milli)
        if template.memory > 0:
            per_node = np.minimum(per_node, np.maximum(snapshot.memory_free[feasible], 0) // template.memory)
        capacity[feasible] = per_node
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
    # No single group holds the rest: take the biggest groups first so the gang spans the fewest,
    # and once one group can hold what is left, the one that holds it with the least left over
    # (a group partly used already rather than an empty one).
    slots: list[Slot] = []
    rest = list(ranks)
    left = sorted((g for g in groups if g[1] > 0), key=lambda g: (-g[1], g[0][0]))
    while rest and left:
        holding = [g for g in left if g[1] >= len(rest)]
        members, cap = min(holding, key=lambda g: (g[1], g[0][0])) if holding else left[0]
        left = [g for g in left if g[0] is not members]
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
    """A planned gang: its plan, and how far its members got.

    `seen`: ranks whose filter passed on their planned node under this plan; `ready`: rank -> pod
    key of members that reached bind on their planned node (kube-scheduler's own filters accepted
    it there); `bound`: ranks bound. `durable`: the plan is written on the member pods and binding
    has begun: the gang is completed, never let go.
    """

    namespace: str
    group: str
    plan: GangPlan
    template: PodRequest
    plan_id: str
    progress_at: float
    bound: set[int] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    ready: dict[int, str] = field(default_factory=dict)
    durable: bool = False
    binding: bool = False  # a bind call is creating the gang's Bindings now
    members: frozenset[str] = frozenset()  # pod keys of the members when planned

    def slot(self, rank: int) -> Slot:
        return next(s for s in self.plan.slots if s.rank == rank)

    def reservation(self, slot: Slot) -> PodRequest:
        return replace(
            self.template,
            namespace=self.namespace,
            name=f"{RESERVATION_PREFIX}{self.group}:{slot.rank}",
            uid="",
            node_name=slot.node,
            gpu_ids=slot.gpus,
            pod_group="",
        )

    def reservation_key(self, rank: int) -> str:
        return f"{self.namespace}/{RESERVATION_PREFIX}{self.group}:{rank}"


RESERVATION_PREFIX = "gang:"


@dataclass(frozen=True, slots=True)
class Admission:
    """A gang member's answer: its slot (node, GPUs, rank), or why it cannot pass now.

    `unschedulable`: the answer is a per-node failure (kube-scheduler marks the pod Unschedulable,
    runs preemption when `resolvable`, and cluster-autoscaler may add nodes); otherwise a wait that
    clears by itself, sent as the filter's Error.
    """

    slot: Slot | None
    error: str
    reservation_key: str = ""
    plan: GangPlan | None = None
    unschedulable: bool = False
    resolvable: bool = True


@dataclass(frozen=True, slots=True)
class GangBinding:
    """What the bind verb does for a gang member that reached bind."""

    bind: tuple[tuple[int, str], ...]  # (rank, pod key) to bind now, all together; empty: wait
    wait: str = ""  # why this member is not bound yet (sent as the bind's Error: kube-scheduler retries)


class GangManager:
    """Plans, reservations and whole-or-nothing binding of gangs, keyed by (namespace, pod group).

    State changes (all under the caller's lock, with the caller's clock):

    - no plan -> planned: the first member's filter once every member exists (`admit`); the plan
      reserves GPUs for every unbound rank. Members missing: nothing is planned or held.
    - planned -> planned anew: a member's filter does not offer its planned node (kube-scheduler's
      own filters turned it away): a new plan at once inside the offered nodes, bound ranks kept.
    - progress (the plan made, a rank's first filter on its planned node, a rank's first bind)
      renews the reservation; a gang with no progress for `ttl_s` is dropped, nothing of it bound.
    - members reach bind one by one (`reach_bind`) and are refused until every unbound rank has;
      the one that completes the set gets every ready rank back to bind together.
    - binding: the caller writes the plan on the pods (`durable`), then creates the Bindings and
      reports each (`bound`, `bind_failed`). A durable gang is never dropped: a member whose bind
      failed is bound on its next attempt without waiting for the others.
    - a restarted manager finds durable plans on the pods (`admit` reads gang_plan annotations of
      members bound under it) and completes them; a plan written on pods of which none was bound
      is planned afresh.
    """

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
        self.active: dict[tuple[str, str], ActiveGang] = {}
        self.expired_total = 0
        self.placed_total = 0
        self.replans_total = 0

    def reservations(self) -> list[PodRequest]:
        """Virtual pods (with node and GPUs) holding the GPUs of every planned, unbound member."""
        return [
            gang.reservation(slot)
            for gang in self.active.values()
            for slot in gang.plan.slots
            if slot.rank not in gang.bound
        ]

    def expire(self, now: float) -> int:
        gone = [
            key
            for key, gang in self.active.items()
            if not gang.durable and not gang.binding and gang.progress_at + self.ttl_s < now
        ]
        for key in gone:
            del self.active[key]
        if gone:
            self.expired_total += len(gone)
            self.on_change()
        return len(gone)

    def prune(self, exists: Callable[[str], bool]) -> int:
        """Let go of gangs none of whose member pods exist any more (a job deleted while partly
        bound: a durable gang is otherwise never let go)."""
        gone = [key for key, g in self.active.items() if not g.binding and not any(exists(k) for k in g.members)]
        for key in gone:
            del self.active[key]
        if gone:
            self.on_change()
        return len(gone)

    def pending(self) -> int:
        return len(self.active)

    def partly_bound(self) -> int:
        """Gangs with some members bound and others not (binding under way, or stuck after a
        failure: their remaining members are bound as they come back)."""
        return sum(1 for g in self.active.values() if g.bound and len(g.bound) < g.plan.size)

    def oldest_progress(self) -> float | None:
        """The least recent progress of any planned gang (None when none is planned)."""
        return min((g.progress_at for g in self.active.values()), default=None)

    def admit(
        self,
        snapshot: ClusterSnapshot,
        pod: PodRequest,
        members: Sequence[PodRequest],
        now: float,
        offered: np.ndarray | None = None,
    ) -> Admission:
        """Plan the pod's gang if needed and return the pod's slot, or why it cannot pass now.

        `offered`: snapshot indices of the nodes kube-scheduler let through for this member
        (None: every node, as in the simulator). Nodes where other members are nominated count as
        offered: kube-scheduler counts a nominated member there, so it turns them away for this one.
        """
        if pod.min_member < 1:
            return Admission(None, f"gang {pod.pod_group}: {size_unknown(pod)}")
        key = (pod.namespace, pod.pod_group)
        self.expire(now)
        ranks = rank_members(members, pod.min_member)
        if pod.key not in ranks:
            return Admission(
                None,
                f"gang {pod.pod_group}: more than {pod.min_member} members, or rank out of range",
                unschedulable=True,
                resolvable=False,
            )
        rank = ranks[pod.key]
        me = next((m for m in members if m.key == pod.key), pod)
        if me.node_name in snapshot.index:
            # Bound already (with its gang, and kube-scheduler's copy is late): its own node.
            placed = snapshot.placements.get(me.key)
            gpus = placed.gpus if placed is not None else me.gpu_ids
            slot = Slot(rank, me.node_name, tuple(gpus), _path(snapshot, snapshot.index[me.node_name]))
            return Admission(slot, "", me.key)
        if offered is not None:
            nominated = [snapshot.index[m.nominated_node] for m in members if m.nominated_node in snapshot.index]
            if nominated:
                offered = np.union1d(offered, nominated)
        gang = self.active.get(key) or self._restore(snapshot, pod, members, ranks, now)
        if gang is not None:
            slot = gang.slot(rank)
            stale = slot.node not in snapshot.index or (
                offered is not None and rank not in gang.bound and not np.isin(snapshot.index[slot.node], offered)
            )
            if stale and not gang.binding:
                self._drop(key, snapshot)
                self.replans_total += 1
                gang = None
            elif stale:
                return Admission(None, f"gang {pod.pod_group}: its members are being bound; retrying")
        if gang is None:
            present = len(ranks)
            if present < pod.min_member:
                return Admission(
                    None,
                    f"gang {pod.pod_group}: waiting for members ({present} of {pod.min_member} exist);"
                    " nothing is held until all exist",
                    unschedulable=True,
                    resolvable=False,
                )
            gang_or_refusal = self._plan(snapshot, pod, members, ranks, now, offered)
            if isinstance(gang_or_refusal, GangRefusal):
                return Admission(None, gang_or_refusal.reason, unschedulable=True)
            gang = gang_or_refusal
        slot = gang.slot(rank)
        if rank not in gang.seen:
            gang.seen.add(rank)
            gang.progress_at = now
        return Admission(slot, "", gang.reservation_key(rank), gang.plan)

    def _plan(
        self,
        snapshot: ClusterSnapshot,
        pod: PodRequest,
        members: Sequence[PodRequest],
        ranks: dict[str, int],
        now: float,
        offered: np.ndarray | None,
    ) -> ActiveGang | GangRefusal:
        template = member_template(pod)
        fixed = bound_members(snapshot, members, ranks)
        candidates = offered
        if candidates is not None and fixed:
            candidates = np.union1d(candidates, [node for _, node, _ in fixed])
        result = plan_gang(snapshot, self.framework, template, pod.min_member, self.max_span, fixed, candidates)
        if isinstance(result, GangRefusal):
            return result
        gang = ActiveGang(
            pod.namespace,
            pod.pod_group,
            result,
            template,
            f"{pod.pod_group}-{uuid.uuid4().hex[:12]}",
            now,
            bound={r for r, _, _ in fixed},
            members=frozenset(ranks),
        )
        if not self._activate(snapshot, gang):  # cannot happen: the plan was made on this snapshot
            return GangRefusal(f"gang {pod.pod_group}: its plan no longer fits; planning again", 0)
        return gang

    def _restore(
        self,
        snapshot: ClusterSnapshot,
        pod: PodRequest,
        members: Sequence[PodRequest],
        ranks: dict[str, int],
        now: float,
    ) -> ActiveGang | None:
        """A plan written on the pods whose binding was under way (some member bound under it)."""
        plan_ids = {m.gang_plan for m in members if m.gang_plan and m.node_name}
        if len(plan_ids) != 1:
            return None
        plan_id = plan_ids.pop()
        under = [m for m in members if m.gang_plan == plan_id and m.key in ranks]
        slots = []
        for m in under:
            node = m.node_name or m.planned_node
            if node not in snapshot.index:
                return None
            gpus = snapshot.placements[m.key].gpus if m.key in snapshot.placements else m.gpu_ids
            slots.append(Slot(ranks[m.key], node, tuple(gpus), _path(snapshot, snapshot.index[node])))
        if {s.rank for s in slots} != set(range(pod.min_member)):
            return None  # the plan does not cover the gang as it is now: plan afresh around the bound
        template = member_template(pod)
        plan = GangPlan(pod.min_member, tuple(sorted(slots, key=lambda s: s.rank)), "restored")
        bound = {ranks[m.key] for m in under if m.node_name}
        gang = ActiveGang(
            pod.namespace,
            pod.pod_group,
            plan,
            template,
            plan_id,
            now,
            bound=bound,
            durable=True,
            members=frozenset(ranks),
        )
        return gang if self._activate(snapshot, gang) else None

    def restore(self, snapshot: ClusterSnapshot, members: Sequence[PodRequest], now: float) -> bool:
        """Take up a gang whose binding was under way when the last extender stopped (a member
        bound under a plan written on the pods). Called for every such gang as soon as the pods
        are listed, before any decision, so that no other plan takes its GPUs meanwhile."""
        size = max((m.min_member for m in members), default=0)
        if size < 1 or not members:
            return False
        first = members[0]
        if (first.namespace, first.pod_group) in self.active:
            return False
        ranks = rank_members(members, size)
        pod = next((m for m in members if m.key in ranks), None)
        return pod is not None and self._restore(snapshot, pod, members, ranks, now) is not None

    def _activate(self, snapshot: ClusterSnapshot, gang: ActiveGang) -> bool:
        """Reserve the plan's unbound slots; False (nothing reserved) when a GPU is taken already."""
        placed = []
        try:
            for slot in gang.plan.slots:
                if slot.rank not in gang.bound:
                    snapshot.place(gang.reservation(slot), snapshot.index[slot.node], slot.gpus)
                    placed.append(gang.reservation_key(slot.rank))
        except SnapshotError:
            for key in placed:
                snapshot.remove(key)
            return False
        self.active[(gang.namespace, gang.group)] = gang
        self.on_change()
        return True

    def _drop(self, key: tuple[str, str], snapshot: ClusterSnapshot | None = None) -> None:
        """Forget the gang's plan; its reservations leave `snapshot` now (others' on their next sync)."""
        gang = self.active.pop(key, None)
        if gang is None:
            return
        if snapshot is not None:
            for slot in gang.plan.slots:
                snapshot.remove(gang.reservation_key(slot.rank))
        self.on_change()

    def release(self, namespace: str, group: str) -> None:
        self._drop((namespace, group))

    def reach_bind(self, pod: PodRequest, rank: int, members: Sequence[PodRequest], now: float) -> GangBinding:
        """A member reached bind on its planned node: the ranks to bind now, or why it waits."""
        gang = self.active.get((pod.namespace, pod.pod_group))
        if gang is None:
            return GangBinding((), f"gang {pod.pod_group}: no plan (it lapsed); planning again")
        if gang.binding:
            return GangBinding((), f"gang {pod.pod_group}: its members are being bound now")
        if gang.ready.get(rank) != pod.key:
            gang.ready[rank] = pod.key
            gang.progress_at = now
        if gang.durable:
            gang.binding = True
            return GangBinding(((rank, pod.key),))
        current = {m.key for m in members}
        gang.ready = {r: k for r, k in gang.ready.items() if k in current}
        waiting = [r for r in range(gang.plan.size) if r not in gang.bound and r not in gang.ready]
        if waiting:
            done = gang.plan.size - len(waiting)
            return GangBinding(
                (),
                f"gang {pod.pod_group}: {done} of {gang.plan.size} members ready to bind; all are bound"
                " when the last one is (ranks missing: " + ",".join(map(str, waiting[:8])) + ")",
            )
        gang.binding = True
        return GangBinding(tuple(sorted(gang.ready.items())))

    def made_durable(self, pod: PodRequest) -> None:
        """The plan is on every member pod: from now on the gang is completed, never dropped."""
        gang = self.active.get((pod.namespace, pod.pod_group))
        if gang is not None:
            gang.durable = True

    def binding_done(self, pod: PodRequest) -> None:
        """The bind call that took the gang's members is over (whatever came of each)."""
        gang = self.active.get((pod.namespace, pod.pod_group))
        if gang is not None:
            gang.binding = False

    def not_ready(self, pod: PodRequest, rank: int) -> None:
        """A member that reached bind could not be bound (pod gone, no longer fits): it must come again."""
        gang = self.active.get((pod.namespace, pod.pod_group))
        if gang is not None and gang.ready.get(rank) == pod.key:
            del gang.ready[rank]

    def bound(self, pod: PodRequest, rank: int) -> None:
        """A member was bound: its reservation is over; the gang is done once all are."""
        key = (pod.namespace, pod.pod_group)
        gang = self.active.get(key)
        if gang is None:
            return
        gang.bound.add(rank)
        gang.ready.pop(rank, None)
        if len(gang.bound) >= gang.plan.size:
            del self.active[key]
            self.placed_total += 1
        self.on_change()


def member_template(pod: PodRequest) -> PodRequest:
    """The shape every member of `pod`'s gang is planned with: the pod without its own rank,
    node, GPUs or written plan."""
    return replace(
        pod, rank=None, node_name="", gpu_ids=(), name=f"{pod.pod_group}-member", planned_node="", gang_plan=""
    )


def bound_members(
    snapshot: ClusterSnapshot, members: Sequence[PodRequest], ranks: dict[str, int]
) -> list[tuple[int, int, tuple[int, ...]]]:
    """(rank, node index, GPUs) of the members already bound: what a new plan must keep."""
    return [
        (ranks[m.key], snapshot.index[m.node_name], snapshot.placements[m.key].gpus)
        for m in members
        if m.node_name in snapshot.index and m.key in ranks and m.key in snapshot.placements
    ]


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
