"""What each extender verb does, apart from HTTP. Answers come from the in-memory snapshot; only
bind talks to the API server.

Verb behaviour (also in the README):
- filter: nodes that pass every gpusched filter go back in NodeNames; the rest in FailedNodes with
  gpusched's reason, or FailedAndUnresolvableNodes when preempting pods could not help (CUDA
  version, GPU model or memory size, stale report). Nodes gpusched does not know yet fail with
  "unknown to gpusched". A malformed pod request answers with Error naming the annotation.
- prioritize: an integer 0..10 per node: 10 for gpusched's best node, falling linearly to 0 for
  nodes SCORE_SPAN points (of 100) or more behind it, so small differences stay small.
- bind: picks the GPUs on the chosen node, holds them in the assume-cache, and creates the Binding
  with the GPUs in annotation gpusched.io/gpu-ids; if the pod no longer fits, answers Error.
- preempt: keeps only the nodes where evicting kube-scheduler's victims makes the pod fit by
  gpusched's filters too, with the same victims.
- gang members (label scheduling.x-k8s.io/pod-group): the first member's filter plans the whole
  gang and reserves its GPUs (scheduler/core/gang.py); each member then filters to its planned node
  only, and is told to wait (Error) until all members exist. Bind writes the rank, planned node
  and topology path onto the pod.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from scheduler.core.framework import Decision, Framework
from scheduler.core.gang import Admission, GangManager
from scheduler.core.gpu_assignment import describe
from scheduler.core.podspec import ANN_GPU_IDS, parse_pod
from scheduler.core.snapshot import ClusterSnapshot, SnapshotError
from scheduler.core.types import PodRequest
from scheduler.extender import wire
from scheduler.metrics import ExtenderMetrics
from scheduler.state.store import ClusterState

log = logging.getLogger("gpusched.extender")

SCORE_SPAN = 20.0
NAME_CACHE = 4  # node-name lists remembered with their snapshot indices
ANN_RANK = "gpusched.io/rank"
ANN_PLANNED_NODE = "gpusched.io/planned-node"
ANN_TOPOLOGY_PATH = "gpusched.io/topology-path"
MAX_EXTENDER_SCORE = 10


def summarize(reasons: Iterable[str], most: int = 4) -> str:
    """Reasons counted like kube-scheduler's own messages: "2 <reason>, 1 <reason>"."""
    counts = Counter(reasons)
    parts = [f"{n} {reason}" for reason, n in counts.most_common(most)]
    if len(counts) > most:
        parts.append(f"{len(counts) - most} more reasons")
    return ", ".join(parts)


class Binder(Protocol):
    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None: ...


class ExtenderService:
    def __init__(
        self,
        state: ClusterState,
        framework: Framework,
        binder: Binder,
        metrics: ExtenderMetrics,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.state = state
        self.framework = framework
        self.binder = binder
        self.metrics = metrics
        self.ready = ready
        self.last_change_at = time.time()
        self._changes_seen = -1
        self._rebuilds_seen = -1
        # Node-name lists seen lately with their indices, and the last filter's feasible nodes.
        self._name_cache: list[tuple[list[str], ClusterSnapshot, np.ndarray, list[str]]] = []
        self._passed: tuple[PodRequest, int, ClusterSnapshot, np.ndarray] | None = None
        config = state.config
        self.gangs = GangManager(framework, config.gang_ttl_s, config.gang_max_span, on_change=state.mark_changed)
        state.reservations = self.gangs.reservations
        # state.snapshot so that scrapes of an idle extender see report ages as of the scrape.
        metrics.watch_cluster(self.state.snapshot, self.state.lock)
        metrics.watch_framework(framework)
        metrics.watch_gangs(self.gangs)
        metrics.watch_layout(self.state.snapshot, self.state.lock, config)

    # ------------------------------------------------------------------ helpers
    def _snapshot(self) -> ClusterSnapshot:
        self.gangs.expire(self.state.clock())
        snap = self.state.snapshot()
        if self.state.rebuilds != self._rebuilds_seen:
            # A relist just built the state: millions of long-lived objects at 5,000 nodes. Keep
            # the cyclic collector from walking them again on every full collection (pauses of
            # tens of milliseconds inside decisions); what changes later is collected as usual.
            # The snapshot just replaced (its memo refers back to it) is collected first: frozen
            # objects are never freed.
            self._rebuilds_seen = self.state.rebuilds
            self._name_cache, self._passed = [], None  # they refer to the snapshot replaced
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        if self.state.changes != self._changes_seen:
            self._changes_seen = self.state.changes
            self.last_change_at = time.time()
        self.metrics.snapshot_age.set(time.time() - self.last_change_at)
        self.metrics.assumed_pods.set(len(self.state.assumed))
        return snap

    def _candidates(self, snap: ClusterSnapshot, names: list[str]) -> tuple[np.ndarray, list[str]]:
        """Snapshot indices of the named nodes, and the names gpusched does not know.

        kube-scheduler sends the same list again and again (every node that passed its own
        filters; to prioritize, those that passed gpusched's filter too): the last lists are
        remembered with their indices, and a list equal to one of them costs one comparison.
        """
        for known_names, known_snap, indices, unknown in self._name_cache:
            if known_snap is snap and known_names == names:
                return indices, unknown
        get = snap.index.get
        found = [get(name) for name in names]
        if None in found:
            unknown = [n for n, i in zip(names, found, strict=True) if i is None]
            found = [i for i in found if i is not None]
        else:
            unknown = []
        indices = np.array(found, dtype=np.intp)
        self._remember_names(names, snap, indices, unknown)
        return indices, unknown

    def _remember_names(self, names: list[str], snap: ClusterSnapshot, indices: np.ndarray, unknown: list[str]) -> None:
        self._name_cache = [(names, snap, indices, unknown), *self._name_cache[: NAME_CACHE - 1]]

    @staticmethod
    def _names(args: wire.ExtenderArgs) -> list[str]:
        if args.node_names is not None:
            return list(args.node_names)
        items = args.nodes.items if args.nodes is not None else []
        return [str((item.get("metadata") or {}).get("name", "")) for item in items]

    def _decide(self, snap: ClusterSnapshot, pod: PodRequest, nodes: np.ndarray) -> Decision:
        return self.framework.decide(snap, pod, nodes, on_filter=self._count_rejection, score=False)

    def _admit(self, snap: ClusterSnapshot, pod: PodRequest) -> Admission:
        """The gang member's planned slot (planning the gang if needed), or why it must wait."""
        members = [p for p in self.state.pods.values() if p.namespace == pod.namespace and p.pod_group == pod.pod_group]
        if all(m.key != pod.key for m in members):
            members.append(pod)
        admission = self.gangs.admit(snap, pod, members, self.state.clock())
        if admission.slot is not None and admission.slot.node not in snap.index:
            self.gangs.release(pod.namespace, pod.pod_group)
            return Admission(None, f"gang {pod.pod_group}: planned node {admission.slot.node} is gone; planning again")
        return admission

    def _count_rejection(self, plugin: str, nodes: int) -> None:
        self.metrics.filter_rejections.labels(plugin).inc(nodes)

    def _filtered_just_now(self, pod: PodRequest, snap: ClusterSnapshot, nodes: np.ndarray) -> bool:
        """Whether every node in `nodes` passed this pod's last filter, with nothing changed since
        (same pod, same snapshot, same state generation): its filters need not run again."""
        if self._passed is None:
            return False
        last_pod, generation, last_snap, feasible = self._passed
        if last_snap is not snap or generation != self.state.generation or last_pod != pod:
            return False
        return nodes is feasible or bool(np.isin(nodes, feasible).all())

    # -------------------------------------------------------------------- verbs
    def filter(self, args: wire.ExtenderArgs) -> wire.ExtenderFilterResult:
        pod = parse_pod(args.pod, self.state.config.gpu_resource)
        names = self._names(args)
        with self.state.lock:
            snap = self._snapshot()
            generation = self.state.generation
            nodes, unknown = self._candidates(snap, names)
            failed = dict.fromkeys(unknown, "gpusched: unknown to gpusched (no Node in its cache yet)")
            if pod.pod_group and not pod.errors:
                admission = self._admit(snap, pod)
                if admission.slot is None:
                    return wire.ExtenderFilterResult(node_names=None, error=f"gpusched: {admission.error}")
                planned = snap.index[admission.slot.node]
                note = f"gpusched: gang {pod.pod_group}: rank {admission.slot.rank} is planned on {admission.slot.node}"
                failed.update({snap.names[i]: note for i in nodes if i != planned})
                nodes = nodes[nodes == planned]
                with snap.without([admission.reservation_key]):
                    decision = self._decide(snap, pod, nodes)
            else:
                decision = self._decide(snap, pod, nodes)
        if decision.error:
            return wire.ExtenderFilterResult(node_names=None, error=f"gpusched: {decision.error}")
        if not decision.feasible.size and any(r.transient for r in decision.rejections):
            return wire.ExtenderFilterResult(
                node_names=None, error=f"gpusched: no node fits now, retrying: {summarize(decision.reasons.values())}"
            )
        unresolvable: dict[str, str] = {}
        name_array = snap.name_array
        for rejection in decision.rejections:
            texts = "gpusched: " + np.asarray(rejection.reasons, dtype=object)  # elementwise, in C
            for target, mask in ((failed, rejection.resolvable), (unresolvable, ~rejection.resolvable)):
                if mask.any():
                    target.update(zip(name_array[rejection.nodes[mask]].tolist(), texts[mask].tolist(), strict=True))
        passed: list[str] = name_array[decision.feasible].tolist()
        if not pod.pod_group:
            with self.state.lock:
                if self.state.generation == generation:
                    self._passed = (pod, generation, snap, decision.feasible)
                    self._remember_names(passed, snap, decision.feasible, [])
        if args.node_names is None and args.nodes is not None:
            keep = set(passed)
            items = [i for i in args.nodes.items if (i.get("metadata") or {}).get("name") in keep]
            return wire.ExtenderFilterResult(
                nodes=wire.NodeList(items=items), failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable
            )
        return wire.ExtenderFilterResult(
            node_names=passed, failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable
        )

    def prioritize(self, args: wire.ExtenderArgs) -> list[wire.HostPriority]:
        pod = parse_pod(args.pod, self.state.config.gpu_resource)
        names = self._names(args)
        with self.state.lock:
            snap = self._snapshot()
            nodes, unknown = self._candidates(snap, names)
            if self._filtered_just_now(pod, snap, nodes):
                decision = self.framework.score_feasible(snap, pod, nodes)
            else:
                decision = self.framework.decide(snap, pod, nodes)
        if decision.feasible.size and decision.feasible is nodes and not unknown:
            # Every named node was feasible, in the order named: one score each, in order.
            return [wire.HostPriority(host=n, score=s) for n, s in zip(names, self._levels(decision), strict=True)]
        scores = dict.fromkeys(names, 0)
        if decision.feasible.size:
            feasible_names = [snap.names[i] for i in decision.feasible.tolist()]
            scores.update(zip(feasible_names, self._levels(decision), strict=True))
        return [wire.HostPriority(host=name, score=score) for name, score in scores.items()]

    @staticmethod
    def _levels(decision: Decision) -> list[int]:
        """kube-scheduler's 0..10 per feasible node: 10 for the best, 0 at SCORE_SPAN points behind."""
        behind = decision.total.max() - decision.total
        levels = np.clip(np.rint(MAX_EXTENDER_SCORE * (1.0 - behind / SCORE_SPAN)), 0, MAX_EXTENDER_SCORE)
        return levels.astype(int).tolist()

    def bind(self, args: wire.ExtenderBindingArgs) -> wire.ExtenderBindingResult:
        key = f"{args.pod_namespace}/{args.pod_name}"
        with self.state.lock:
            pod = self.state.pods.get(key)
        if pod is None:
            obj = self.binder.get_pod(args.pod_namespace, args.pod_name)
            if obj is None:
                self.metrics.binds.labels("pod_not_found").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: pod {key} not found")
            pod = parse_pod(obj, self.state.config.gpu_resource)
        annotations: dict[str, str] = {}
        rank = -1
        with self.state.lock:
            snap = self._snapshot()
            node = snap.index.get(args.node)
            if node is None:
                self.metrics.binds.labels("unknown_node").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: node {args.node} is unknown to gpusched")
            previous = self.state.assumed.get(key)
            if key in snap.placements:
                self.state.forget_assumed(key)  # a retry of a pod we already assumed: choose afresh
                snap = self._snapshot()
            release: list[str] = []
            planned: tuple[int, ...] = ()
            if pod.pod_group and not pod.errors:
                admission = self._admit(snap, pod)
                if admission.slot is None or admission.slot.node != args.node:
                    self.metrics.binds.labels("not_planned").inc()
                    # The manager's errors name the gang already.
                    which = admission.slot.rank if admission.slot else "?"
                    why = admission.error or f"gang {pod.pod_group}: rank {which} is planned elsewhere"
                    return wire.ExtenderBindingResult(error=f"gpusched: {why}")
                release, planned, rank = [admission.reservation_key], admission.slot.gpus, admission.slot.rank
                annotations = {
                    ANN_RANK: str(rank),
                    ANN_PLANNED_NODE: admission.slot.node,
                    ANN_TOPOLOGY_PATH: admission.slot.path,
                }
            with snap.without(release):
                decision = self.framework.decide(snap, pod, np.array([node], dtype=np.intp), score=False)
                gpus = planned or (self.framework.choose_gpus(snap, pod, node) if decision.feasible.size else ())
            if pod.wants_gpu and (not gpus or not decision.feasible.size):
                self.state.restore_assumed(previous)
                self.metrics.binds.labels("no_longer_fits").inc()
                why = decision.error or decision.reasons.get(node, "no usable GPUs left")
                return wire.ExtenderBindingResult(error=f"gpusched: {key} no longer fits {args.node}: {why}")
            try:
                self.state.assume(pod, args.node, gpus, replaces=release[0] if release else "")
            except SnapshotError as exc:
                self.state.mark_changed()
                self.metrics.binds.labels("no_longer_fits").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: {exc}")
        if gpus:
            annotations[ANN_GPU_IDS] = ",".join(str(g) for g in gpus)
        try:
            self.binder.bind(args.pod_namespace, args.pod_name, args.pod_uid, args.node, annotations)
        except Exception as exc:  # any failure: release the GPUs and let kube-scheduler retry
            self.state.forget_assumed(key)
            # A retry that failed leaves the pod where the bind before it put it (the API may
            # well have it bound there: a 409 says so).
            self.state.restore_assumed(previous)
            self.metrics.binds.labels("api_error").inc()
            log.warning("bind %s -> %s failed: %s", key, args.node, exc)
            return wire.ExtenderBindingResult(error=f"gpusched: binding {key} to {args.node} failed: {exc}")
        if rank >= 0:
            with self.state.lock:
                self.gangs.bound(pod, rank)
        self.metrics.binds.labels("bound").inc()
        with self.state.lock:  # the snapshot changes in place under the informers
            self.metrics.observe_bound(snap, pod, node, self.state.config)
        log.info("bound %s to %s gpus=%s", key, args.node, list(gpus))
        return wire.ExtenderBindingResult()

    def preempt(self, args: wire.ExtenderPreemptionArgs) -> wire.ExtenderPreemptionResult:
        pod = parse_pod(args.pod, self.state.config.gpu_resource)
        if pod.errors:
            return wire.ExtenderPreemptionResult()
        victims: dict[str, list[str]] = {}
        meta: dict[str, wire.MetaVictims] = {}
        if args.node_name_to_meta_victims is not None:
            for node, v in args.node_name_to_meta_victims.items():
                victims[node] = [p.uid for p in v.pods]
                meta[node] = v
        elif args.node_name_to_victims is not None:
            for node, full in args.node_name_to_victims.items():
                uids = [str((p.get("metadata") or {}).get("uid", "")) for p in full.pods]
                victims[node] = uids
                meta[node] = wire.MetaVictims([wire.MetaPod(u) for u in uids], full.num_pdb_violations)
        result: dict[str, wire.MetaVictims] = {}
        with self.state.lock:
            snap = self._snapshot()
            for node_name, uids in victims.items():
                index = snap.index.get(node_name)
                if index is None:
                    continue
                keys = [p.key for p in (self.state.pod_by_uid(u) for u in uids) if p is not None]
                with snap.without(keys):
                    decision = self.framework.decide(snap, pod, np.array([index], dtype=np.intp))
                if decision.feasible.size:
                    result[node_name] = meta[node_name]
        return wire.ExtenderPreemptionResult(node_name_to_meta_victims=result)

    def explain(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = f"{namespace}/{name}"
        with self.state.lock:
            pod = self.state.pods.get(key)
            if pod is None:
                return None
            snap = self._snapshot()
            # A placed pod is explained as if it were not placed yet.
            with snap.without([key]):
                decision = self.framework.decide(snap, pod)
                out = decision.explain()
                best = decision.best()
                if best is not None:
                    out["gpus"] = list(self.framework.choose_gpus(snap, pod, best))
            # Where it is placed: the GPUs its annotation names, those the kubelet says, those counted.
            out["gpuIds"] = describe(snap, key)
        out["boundTo"] = pod.node_name or None
        return out
