"""ClusterState: what the informers saw, plus pods gpusched has bound but the API does not yet show
bound (the assume-cache), kept as one ClusterSnapshot that each event updates in place.

Like kube-scheduler's cache, an event changes only what it touches (docs/ARCHITECTURE.md, "Where
state lives"):

- a pod added, bound, changed or deleted: that pod's placement (its node's GPU rows and counters);
- a GPUNodeReport whose content did not change, or the node's agent Lease renewed (the agent's
  heartbeat): that node's liveness time only;
- a changed report, Node object or learned pull rate: that node's rows, its pods placed again;
- a node added or deleted, or a relist: a new snapshot, built from everything held here.

A node's report age is the time since the extender last saw its agent alive: its report written or
its Lease renewed, by this process's clock (a node whose clock runs ahead cannot keep a dead agent
fresh). What a relist finds is dated by the object's own time (reportTime, renewTime), never
later than now. A deleted Node takes its report and Lease time with it, so a node recreated under
the same name starts without a report until its agent writes one.

All mutation happens under `lock`, and readers decide under it too, so a decision sees one
consistent state; an event waits at most one decision (about a millisecond). `generation` moves
whenever something that can change a decision changed (report ages aside: the snapshot holds each
report's time and the time of the read, so a report goes stale on time even when nothing changes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.gang import RESERVATION_PREFIX
from scheduler.core.gang_sources import resolve
from scheduler.core.gpu_assignment import GpuAssignments
from scheduler.core.objects import node_from_object, parse_time, with_report
from scheduler.core.podspec import ANN_GPU_MILLI, MIG_RESOURCE_PREFIX, parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.state.pull_throughput import PullThroughput, event_node

TERMINAL_PHASES = ("Succeeded", "Failed")
ASSUME_TTL_S = 60.0


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


SizeOf = Callable[[Mapping[str, Any]], int | None]  # a PodGroup's gang size, None: unreadable


def _group_key(api_group: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), f"{api_group}/{meta.get('name', '')}"


class ClusterState:
    def __init__(self, config: SchedulerConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.nodes: dict[str, NodeState] = {}  # from Node objects alone
        self.reports: dict[str, Mapping[str, Any]] = {}
        self.pods: dict[str, PodRequest] = {}  # GPU pods that are not finished, bound or not
        self.uids: dict[str, str] = {}  # pod uid -> key
        # Gang sizes from PodGroup objects, (namespace, "<api group>/<name>") -> size
        # (core/gang_sources.py); the pods that name one hold the size it gives. Replaced whole,
        # never changed in place, so a reader needs no lock.
        self.group_sizes: dict[tuple[str, str], int] = {}
        self.assumed: dict[str, tuple[PodRequest, float]] = {}  # key -> (pod with node and GPUs, deadline)
        # Pods that hold GPUs without existing (gang reservations), set by whoever owns them, and
        # the reservations a member has taken over while its bind is under way: reservation key ->
        # the member's pod key (so the member's GPUs are never counted twice).
        self.reservations: Callable[[], list[PodRequest]] = list
        self._taken_over: dict[str, str] = {}
        self._placed_reservations: set[str] = set()
        self._reservations_dirty = False
        self._snapshot: ClusterSnapshot | None = None
        self._merged: dict[str, NodeState] = {}  # node name -> what the snapshot holds for it (age aside)
        self._last_parsed: tuple[tuple[Any, Any], PodRequest] | None = None  # see parse_pod
        # Per snapshot index: when the report was written; inf: no report; -inf (infinitely old):
        # a report with no readable time.
        self._report_times = np.zeros(0)
        self._earliest_report = (np.inf, -1)  # the earliest of _report_times, and its node (-1: none)
        self._static_report_times: dict[str, float] = {}
        self._alive_at: dict[str, float] = {}  # node name -> when its agent was last seen alive
        self.generation = 0  # moves on every change that can alter a decision
        self.rebuilds = 0  # full snapshot builds (relists, nodes added or deleted)
        self.pull = PullThroughput()  # learned from kubelet "Pulled" events; overrides reported rates
        # Pods whose gpusched.io/gpu-ids the kubelet contradicts: kept across snapshots, so a
        # relist does not count a disagreement again.
        self.gpu_assignments = GpuAssignments()

    @property
    def changes(self) -> int:
        return self.generation

    def load_static(self, nodes: Iterable[NodeState], pods: Iterable[PodRequest]) -> None:
        """Offline mode: a fixed cluster (from a scenario file) instead of informers."""
        with self.lock:
            now = self.clock()
            for node in nodes:
                self.nodes[node.name] = node
                if node.report_age_s is not None:
                    self._static_report_times[node.name] = now - node.report_age_s
            for pod in pods:
                self.pods[pod.key] = pod
                if pod.uid:
                    self.uids[pod.uid] = pod.key
            self._rebuild_later()

    # -------------------------------------------------------------- informer input
    def _rebuild_later(self) -> None:
        self._snapshot = None
        self.generation += 1

    def replace_nodes(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.nodes = {}
            for item in items:
                node = node_from_object(item, self.config.gpu_resource)
                if node.name:
                    self.nodes[node.name] = node
            self._rebuild_later()

    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        node = node_from_object(obj, self.config.gpu_resource)
        if not node.name:
            return
        with self.lock:
            known = node.name in self.nodes
            self.nodes[node.name] = node
            if known:
                self._refresh_node(node.name)
            else:
                self._rebuild_later()

    def delete_node(self, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        with self.lock:
            self.reports.pop(name, None)  # a node recreated under this name starts without them
            self._alive_at.pop(name, None)
            if self.nodes.pop(name, None) is not None:
                self._rebuild_later()

    def replace_reports(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            now = self.clock()
            self.reports = {}
            for item in items:
                name = _name(item)
                if name:
                    self.reports[name] = item
                    stamp = parse_time((item.get("spec") or {}).get("reportTime"))
                    if stamp is not None:
                        self._alive_at[name] = max(self._alive_at.get(name, -np.inf), min(stamp, now))
            self._rebuild_later()

    def upsert_report(self, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if name:
            with self.lock:
                self.reports[name] = obj
                self._alive_at[name] = self.clock()  # seen written just now
                self._refresh_node(name)

    def replace_leases(self, items: Iterable[Mapping[str, Any]]) -> None:
        """The agents' Leases (one per node, named after it) as a relist finds them."""
        with self.lock:
            now = self.clock()
            for item in items:
                name = _name(item)
                stamp = parse_time((item.get("spec") or {}).get("renewTime"))
                if name and stamp is not None:
                    self._alive_at[name] = max(self._alive_at.get(name, -np.inf), min(stamp, now))
                    self._refresh_liveness(name)

    def upsert_lease(self, obj: Mapping[str, Any]) -> None:
        """An agent renewed its node's Lease: the node's report is alive as of now."""
        name = _name(obj)
        if name:
            with self.lock:
                self._alive_at[name] = self.clock()
                self._refresh_liveness(name)

    def delete_lease(self, obj: Mapping[str, Any]) -> None:
        """A Lease deleted (its node went, or the agent was removed): liveness comes only from
        the report's own writes now, so a node whose agent is gone goes stale on time."""

    def _refresh_liveness(self, name: str) -> None:
        snap = self._snapshot
        i = snap.index.get(name) if snap is not None else None
        if i is not None and name in self._merged:
            self._set_report_time(i, self._report_time(name, self._merged[name]))

    def delete_report(self, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        with self.lock:
            if self.reports.pop(name, None) is not None:
                self._refresh_node(name)

    def replace_pull_events(self, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            self.observe_pull_event(item)

    def observe_pull_event(self, obj: Mapping[str, Any]) -> None:
        name = event_node(obj)
        sizes = {}
        node = self.nodes.get(name)
        if node is not None:
            sizes = node.images
        if self.pull.observe_event(obj, sizes):
            with self.lock:
                self._refresh_node(name)

    def replace_pods(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.pods, self.uids = {}, {}
            for item in items:
                pod = self._parse_live_pod(item)
                if pod is not None:
                    pod = self.pods[pod.key] = resolve(pod, self.group_sizes)
                    if pod.uid:
                        self.uids[pod.uid] = pod.key
            # Assumed pods that no longer exist are gone for good; the rest wait for their bind.
            for key in [k for k in self.assumed if k not in self.pods]:
                del self.assumed[key]
            self._rebuild_later()

    def _parse_live_pod(self, obj: Mapping[str, Any]) -> PodRequest | None:
        """The pod as gpusched counts it, or None for a pod that holds no GPU (finished, being
        deleted before it was bound, or asking for none)."""
        phase = (obj.get("status") or {}).get("phase")
        deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp")) and not (obj.get("spec") or {}).get(
            "nodeName"
        )
        if phase in TERMINAL_PHASES or deleting or not self._may_want_gpu(obj):
            return None
        pod = parse_pod(obj, self.config.gpu_resource)
        if phase in TERMINAL_PHASES or deleting or not (pod.wants_gpu or pod.wants_mig):
            return None
        return pod

    def parse_pod(self, obj: Mapping[str, Any]) -> PodRequest:
        """A pod as the verbs decide it: parsed, with its gang's size from the PodGroup it names.

        kube-scheduler sends one pod to filter, prioritize and often preempt in turn: the last pod
        parsed is kept under its uid and resourceVersion, which name one version of the object."""
        meta = obj.get("metadata") or {}
        version = (meta.get("uid"), meta.get("resourceVersion"))
        last = self._last_parsed
        if last is not None and last[0] == version:
            pod = last[1]
        else:
            pod = parse_pod(obj, self.config.gpu_resource)
            if version[0] and version[1]:
                self._last_parsed = (version, pod)
        return resolve(pod, self.group_sizes)

    def replace_group_sizes(self, api_group: str, items: Iterable[Mapping[str, Any]], size: SizeOf) -> None:
        """Every PodGroup of `api_group`, each read by `size` (core/gang_sources.py)."""
        with self.lock:
            sizes = {k: v for k, v in self.group_sizes.items() if not k[1].startswith(api_group + "/")}
            for obj in items:
                self._read_size(sizes, api_group, obj, size)
            self._set_group_sizes(sizes)

    def upsert_group_size(self, api_group: str, obj: Mapping[str, Any], size: SizeOf) -> None:
        with self.lock:
            sizes = dict(self.group_sizes)
            self._read_size(sizes, api_group, obj, size)
            self._set_group_sizes(sizes)

    def delete_group_size(self, api_group: str, obj: Mapping[str, Any]) -> None:
        with self.lock:
            sizes = dict(self.group_sizes)
            sizes.pop(_group_key(api_group, obj), None)
            self._set_group_sizes(sizes)

    @staticmethod
    def _read_size(sizes: dict[tuple[str, str], int], api_group: str, obj: Mapping[str, Any], size: SizeOf) -> None:
        value = size(obj)
        if value is None:  # unreadable: its pods wait as for an unknown PodGroup
            sizes.pop(_group_key(api_group, obj), None)
        else:
            sizes[_group_key(api_group, obj)] = value

    def _set_group_sizes(self, sizes: dict[tuple[str, str], int]) -> None:
        """Take `sizes` and give the pods whose size changed their new one."""
        changed = {k for k in sizes.keys() | self.group_sizes.keys() if sizes.get(k) != self.group_sizes.get(k)}
        self.group_sizes = sizes
        if not changed:
            return
        for key, pod in self.pods.items():
            if (pod.namespace, pod.group_size_ref) in changed:
                self.pods[key] = resolve(pod, sizes)
        self.generation += 1

    def _may_want_gpu(self, obj: Mapping[str, Any]) -> bool:
        """Whether the pod names the GPU resource, a MIG instance or a GPU share at all (most pods of
        a cluster do not, and a relist of 100,000 pods should not parse every quantity of every one)."""
        if ANN_GPU_MILLI in ((obj.get("metadata") or {}).get("annotations") or {}):
            return True
        spec = obj.get("spec") or {}
        resource = self.config.gpu_resource
        for container in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ())):
            resources = (container.get("resources") if isinstance(container, Mapping) else None) or {}
            for asked in (resources.get("limits") or {}, resources.get("requests") or {}):
                if resource in asked or any(str(k).startswith(MIG_RESOURCE_PREFIX) for k in asked):
                    return True
        return False

    def upsert_pod(self, obj: Mapping[str, Any]) -> None:
        pod = self._parse_live_pod(obj)
        with self.lock:
            if pod is None:
                meta = obj.get("metadata") or {}
                self._forget(f"{meta.get('namespace', 'default')}/{meta.get('name', '')}")
                return
            old = self.pods.get(pod.key)
            pod = self.pods[pod.key] = resolve(pod, self.group_sizes)
            if pod.uid:
                self.uids[pod.uid] = pod.key
            if pod.node_name:
                self.assumed.pop(pod.key, None)  # the API caught up with our bind: its copy takes over
            if old != pod:
                self.generation += 1
            self._sync_pod(pod.key)

    def delete_pod(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self.lock:
            self._forget(f"{meta.get('namespace', 'default')}/{meta.get('name', '')}")

    def _forget(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self.uids.pop(pod.uid, None)
            self.generation += 1
        if self.assumed.pop(key, None) is not None:
            self.generation += 1
        self._taken_over = {r: k for r, k in self._taken_over.items() if k != key}
        self.gpu_assignments.forget(key)
        self._sync_pod(key)

    # ---------------------------------------------------------------- assume-cache
    def assume(self, pod: PodRequest, node: str, gpus: tuple[int, ...], replaces: str = "") -> None:
        """Hold `gpus` on `node` for `pod` until the API shows it bound, the pod is deleted, or its
        bind fails (`forget_assumed`), as kube-scheduler's assumed pods. Only a bind whose outcome
        is unknown (`bind_outcome_unknown`) is held for a limited time.

        `replaces` names a gang reservation whose GPUs the pod takes over: it is not counted
        again while the bind is under way, nor after the API shows the pod bound.
        """
        with self.lock:
            placed = replace(pod, node_name=node, gpu_ids=gpus)
            self.assumed[pod.key] = (placed, np.inf)
            if replaces:
                self._taken_over[replaces] = pod.key
            self.generation += 1
            if self._snapshot is not None:
                if replaces:
                    self._snapshot.remove(replaces)
                self._sync_pod(pod.key)

    def bind_outcome_unknown(self, key: str) -> None:
        """The bind call ended without an answer (timeout, connection lost): the pod may be bound.
        Hold its GPUs for ASSUME_TTL_S from now; the informer settles it sooner if it was."""
        with self.lock:
            entry = self.assumed.get(key)
            if entry is not None:
                self.assumed[key] = (entry[0], self.clock() + ASSUME_TTL_S)

    def restore_assumed(self, entry: tuple[PodRequest, float] | None) -> None:
        """Put back an assume-cache entry (pod with node and GPUs, deadline) taken out earlier."""
        if entry is None:
            return
        with self.lock:
            pod = entry[0]
            if pod.key in self.assumed or (pod.key in self.pods and self.pods[pod.key].node_name):
                return  # assumed again meanwhile, or the API shows where it is
            self.assumed[pod.key] = entry
            self.generation += 1
            self._sync_pod(pod.key)

    def mark_changed(self) -> None:
        """Something outside the informers changed (gang plans): reservations are synced on the next read."""
        with self.lock:
            self._reservations_dirty = True
            self.generation += 1

    def forget_assumed(self, key: str) -> None:
        with self.lock:
            self._taken_over = {r: k for r, k in self._taken_over.items() if k != key}
            if self.assumed.pop(key, None) is not None:
                self.generation += 1
                self._sync_pod(key)

    # ------------------------------------------------------------ snapshot upkeep
    def _holding(self, key: str) -> PodRequest | None:
        """The pod as it holds resources now: the API's bound copy, else the assumed one."""
        pod = self.pods.get(key)
        if pod is not None and pod.node_name:
            return pod
        entry = self.assumed.get(key)
        return entry[0] if entry is not None else None

    def _sync_pod(self, key: str) -> None:
        """Make the snapshot's placement of `key` what the API and the assume-cache say."""
        snap = self._snapshot
        if snap is None:
            return
        want = self._holding(key)
        placed = snap.placements.get(key)
        have = snap.pods.get(key) if placed is not None else None
        if want is not None and have is not None and want == have:
            return
        if placed is not None:
            snap.remove(key)
        snap.conflicts.pop(key, None)
        if want is not None:
            self._place_first(snap, want)
        if placed is not None:
            self._retry_conflicts(snap, placed.node)  # room was made there

    def _place_first(self, snap: ClusterSnapshot, pod: PodRequest) -> None:
        """Place a pod that exists before the gang holds on its node, as a build does."""
        at = snap.index.get(pod.node_name)
        on_node = snap.node_pods[at] if at is not None else set()
        held = [snap.pods[k] for k in on_node if k in self._placed_reservations]
        for reservation in held:
            snap.remove(reservation.key)
        snap.place_bound(pod)
        for reservation in held:
            snap.place_bound(reservation)

    def _retry_conflicts(self, snap: ClusterSnapshot, node: int) -> None:
        """Pods (and gang holds) that found no room on `node` try again: real pods first."""
        name = snap.names[node]
        waiting = [k for k in snap.conflicts if (p := self._conflicted(k)) is not None and p.node_name == name]
        for key in sorted(waiting, key=lambda k: k in self._placed_reservations):
            pod = self._conflicted(key)
            snap.conflicts.pop(key, None)
            if pod is not None:
                if key in self._placed_reservations:
                    snap.place_bound(pod)
                else:
                    self._place_first(snap, pod)

    def _conflicted(self, key: str) -> PodRequest | None:
        """What a key in the snapshot's conflicts wants to hold: a pod, or a gang hold."""
        pod = self._holding(key)
        if pod is not None:
            return pod
        if key in self._placed_reservations:
            return next((r for r in self.reservations() if r.key == key), None)
        return None

    def _merge(self, name: str, now: float) -> NodeState:
        """The node as the snapshot holds it: Node object, report and learned pull rate, age 0."""
        node = self.pull.apply(with_report(self.nodes[name], self.reports.get(name), now))
        return replace(node, report_age_s=0.0 if node.has_report else None)

    def _report_time(self, name: str, node: NodeState) -> float:
        report = self.reports.get(name)
        if report:
            # When its agent was last seen alive; a report never seen written and with no
            # readable time is as good as infinitely old.
            return self._alive_at.get(name, -np.inf)
        stamp = self._static_report_times.get(name)
        return stamp if stamp is not None else (-np.inf if node.has_report else np.inf)

    def _set_report_time(self, i: int, time: float) -> None:
        """Write node `i`'s report time, keeping the earliest without a pass over the nodes: only a
        later time for the node that held the earliest makes it look again."""
        self._report_times[i] = time
        earliest, at = self._earliest_report
        if time <= earliest:
            self._earliest_report = (time, i)
        elif i == at:
            self._find_earliest_report()

    def _find_earliest_report(self) -> None:
        times = self._report_times
        at = int(times.argmin()) if times.size else -1
        self._earliest_report = (float(times[at]), at) if at >= 0 else (np.inf, -1)

    def _refresh_node(self, name: str) -> None:
        """A node's Node object, report or pull rate changed: update its rows if its content did."""
        snap = self._snapshot
        if snap is None or name not in self.nodes:
            return
        i = snap.index.get(name)
        if i is None:
            self._rebuild_later()
            return
        merged = self._merge(name, self.clock())
        self._set_report_time(i, self._report_time(name, merged))
        if merged == self._merged.get(name):
            return  # a heartbeat: only the report time moved
        self._merged[name] = merged
        self.generation += 1
        reserved = self._placed_reservations
        if not snap.update_node(i, merged, last=lambda pod: pod.key in reserved):
            self._rebuild_later()
            return
        self._retry_conflicts(snap, i)

    def _sync_reservations(self, snap: ClusterSnapshot) -> None:
        """Place the gang reservations that are still wanted, drop the others."""
        live = {r: k for r, k in self._taken_over.items() if k in self.assumed or k in self.pods}
        self._taken_over = live
        wanted = {r.key: r for r in self.reservations() if r.key not in live}
        stale = self._placed_reservations - wanted.keys()
        if self._reservations_dirty:
            # The gang manager may have placed or dropped reservations in this snapshot itself.
            stale |= {k for k in snap.placements if k.split("/", 1)[-1].startswith(RESERVATION_PREFIX)} - wanted.keys()
            self._reservations_dirty = False
        for key in stale:
            snap.remove(key)
            snap.conflicts.pop(key, None)
        for key, reservation in wanted.items():
            if key not in snap.placements or snap.pods.get(key) != reservation:
                snap.remove(key)
                snap.place_bound(reservation)
        self._placed_reservations = set(wanted)

    def snapshot(self) -> ClusterSnapshot:
        """The current snapshot, with report ages as of now."""
        with self.lock:
            now = self.clock()
            for key in [k for k, (_, deadline) in self.assumed.items() if deadline < now]:
                del self.assumed[key]
                self.generation += 1
                self._sync_pod(key)
            if self._snapshot is None:
                self._snapshot = self._build(now)
            snap = self._snapshot
            self._sync_reservations(snap)
            snap.use_report_times(self._report_times, now, self._earliest_report[0])  # no pass over the nodes
            return snap

    def _build(self, now: float) -> ClusterSnapshot:
        self.rebuilds += 1
        self._placed_reservations = set()
        names = sorted(self.nodes)
        self._merged = {name: self._merge(name, now) for name in names}
        nodes = [self._merged[name] for name in names]
        self._report_times = np.array([self._report_time(n.name, n) for n in nodes], dtype=np.float64)
        self._find_earliest_report()
        holding = [p for p in (self._holding(k) for k in [*self.pods, *self.assumed]) if p is not None]
        unique = list({p.key: p for p in holding}.values())
        self.gpu_assignments.retain(p.key for p in unique)
        return ClusterSnapshot(nodes, unique, self.config.tiers, self.gpu_assignments)

    def pod_by_uid(self, uid: str) -> PodRequest | None:
        with self.lock:
            key = self.uids.get(uid)
            return self.pods.get(key) if key else None
