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
- gang members (label scheduling.x-k8s.io/pod-group): see scheduler/core/gang.py. Until every
  member exists, each is Unschedulable ("waiting for members", unresolvable: preemption cannot
  help) and nothing is held. The first filter after that plans the whole gang inside the nodes
  kube-scheduler offered and reserves its GPUs; a gang that does not fit is Unschedulable on every
  node (resolvable: preemption and cluster-autoscaler may help). Each member then passes its
  planned node only; a planned node kube-scheduler no longer offers is planned anew at once. At
  bind, members are refused (Error, kube-scheduler retries them) until every member has reached
  bind on its planned node; the bind of the last one writes the plan on every member pod
  (gang-plan, rank, planned node, topology path, GPU ids) and then binds them all. Errors are
  kept for waits that clear by themselves: members waiting for the rest at bind, a gang being
  bound, a malformed request.
- preempt for a gang member: the gang is planned as if every pod of lower priority were gone; the
  member's node in that plan is kept (with kube-scheduler's victims there, if they make the member
  fit), every other node is dropped; no node at all when the gang would not fit even then, or when
  a victim belongs to a gang with members beyond that node's victims.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

import msgspec
import numpy as np

from scheduler.core.framework import Decision, Framework
from scheduler.core.gang import (
    RESERVATION_PREFIX,
    ActiveGang,
    Admission,
    GangManager,
    GangRefusal,
    bound_members,
    member_template,
    plan_gang,
    rank_members,
)
from scheduler.core.gpu_assignment import describe
from scheduler.core.podspec import (
    ANN_GANG_PLAN,
    ANN_GPU_IDS,
    ANN_PLANNED_NODE,
    ANN_RANK,
    ANN_TOPOLOGY_PATH,
)
from scheduler.core.snapshot import ClusterSnapshot, SnapshotError
from scheduler.core.types import PodRequest
from scheduler.extender import wire
from scheduler.metrics import ExtenderMetrics
from scheduler.state.kube import KubeError
from scheduler.state.store import ClusterState

log = logging.getLogger("gpusched.extender")

SCORE_SPAN = 20.0
NAME_CACHE = 4  # node-name lists remembered with their snapshot indices
MAX_EXTENDER_SCORE = 10


def summarize(reasons: Iterable[str], most: int = 4) -> str:
    """Reasons counted like kube-scheduler's own messages: "2 <reason>, 1 <reason>", the most
    frequent first and ties in the reasons' order (whatever order the nodes came in)."""
    counts = Counter(reasons)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{n} {reason}" for reason, n in ranked[:most]]
    if len(counts) > most:
        parts.append(f"{len(counts) - most} more reasons")
    return ", ".join(parts)


NULL = msgspec.Raw(b"null")


def _node_names(args: wire.ExtenderArgs | wire.SentArgs) -> list[str] | msgspec.Raw | None:
    """The request's NodeNames (a list, or its JSON as sent), None when it sends Nodes instead."""
    sent = args.node_names
    return None if sent is None or (isinstance(sent, msgspec.Raw) and (not len(sent) or sent == NULL)) else sent


class NodeJson:
    """Each node's name as JSON, for the verbs' answers over HTTP, built once per snapshot.

    Every quoted name is padded with spaces (JSON whitespace) to the longest one's width, so that
    the names of thousands of nodes are copied into an answer as fixed-width items of a numpy
    array, in C, rather than joined from Python objects. Where padding would more than double an
    answer (a few names much longer than the rest), answers are joined from the names as they are.
    """

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot
        quoted = [msgspec.json.encode(name) for name in snapshot.names]
        lengths = [len(q) for q in quoted]
        width = max(lengths, default=1)
        self.uniform = min(lengths, default=width) == width  # no padding at all
        self.fixed = width * len(quoted) <= 2 * sum(lengths) + 16 * len(quoted)
        self.spaceless = not any(b" " in q for q in quoted)  # node names have none (DNS names)
        self.quoted = np.array(quoted, dtype=object)
        self.names = np.array([q.ljust(width) for q in quoted], dtype=f"S{width}")
        self.items = np.array([q.ljust(width) + b"," for q in quoted], dtype=f"S{width + 1}")  # array items
        # A HostPriority up to its score, and each score to the end of its entry (`"Score": 7},`).
        self.hosts = np.array([b'{"Host":' + q.ljust(width) + b',"Score":' for q in quoted], dtype=f"S{width + 17}")
        self.scores = np.array([b"%2d}," % level for level in range(MAX_EXTENDER_SCORE + 1)], dtype="S4")

    def listed(self, nodes: np.ndarray) -> bytes:
        """A JSON array of the nodes' names."""
        if not nodes.size:
            return b"[]"
        if not self.fixed:
            return b"[" + b",".join(self.quoted[nodes].tolist()) + b"]"
        return b"".join((b"[", _buffer(self.items.take(nodes))[:-1], b"]"))

    def compact(self, nodes: np.ndarray, listed: bytes) -> bytes:
        """`listed` (this object's JSON array of `nodes`) as kube-scheduler encodes such a list:
        without whitespace."""
        if self.uniform or not self.fixed:
            return listed
        if self.spaceless:
            return listed.replace(b" ", b"")
        return b"[" + b",".join(self.quoted[nodes].tolist()) + b"]"

    def entries(self, nodes: np.ndarray, value: bytes) -> bytes | memoryview:
        """`"name":value,` for each node: entries of a JSON object, each ending with a comma."""
        after = b":" + value + b","
        if not self.fixed:
            return after.join(self.quoted[nodes].tolist()) + after
        items = np.empty(nodes.size, dtype=[("name", self.names.dtype), ("value", f"S{len(after)}")])
        items["name"] = self.names.take(nodes)
        items["value"] = after
        return _buffer(items)

    def priorities(self, nodes: np.ndarray, levels: np.ndarray) -> bytes:
        """A JSON array of HostPriority: each node with its level."""
        if not nodes.size:
            return b"[]"
        if not self.fixed:
            hosts = self.quoted[nodes].tolist()
            pieces = [b'{"Host":%s,"Score":%d}' % pair for pair in zip(hosts, levels.tolist(), strict=True)]
            return b"[" + b",".join(pieces) + b"]"
        items = np.empty(nodes.size, dtype=[("host", self.hosts.dtype), ("score", self.scores.dtype)])
        items["host"] = self.hosts.take(nodes)
        items["score"] = self.scores.take(levels)
        return b"".join((b"[", _buffer(items)[:-1], b"]"))


def _buffer(items: np.ndarray) -> memoryview:
    """The bytes of an array of fixed-width JSON pieces, not copied."""
    return memoryview(items.view(np.uint8).data)


def _json_object(entries: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The pieces of a JSON object, from entries that each end with a comma."""
    if not entries:
        return [b"{}"]
    return [b"{", *entries[:-1], memoryview(entries[-1])[:-1], b"}"]


class Binder(Protocol):
    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def annotate(self, namespace: str, name: str, uid: str, annotations: dict[str, str]) -> None: ...

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None: ...


class ExtenderService:
    def __init__(
        self,
        state: ClusterState,
        framework: Framework,
        binder: Binder,
        metrics: ExtenderMetrics,
        ready: Callable[[], bool] = lambda: True,
        offline: bool = False,
    ) -> None:
        self.state = state
        # Offline (a scenario file, no informers): the pods the filter verb sees are the pods
        # gpusched knows, so that bind finds them and gangs find their members.
        self.offline = offline
        self.framework = framework
        self.binder = binder
        self.metrics = metrics
        self.ready = ready
        self.last_change_at = time.time()
        self._changes_seen = -1
        self._pruned_at = -1  # state generation at the last prune of gangs whose pods are gone
        self._rebuilds_seen = -1
        # Node-name lists seen lately with their indices, and the last filter's feasible nodes.
        self._name_cache: list[tuple[list[str] | msgspec.Raw, ClusterSnapshot, np.ndarray, list[str]]] = []
        self._passed: tuple[PodRequest, int, ClusterSnapshot, np.ndarray] | None = None
        self._node_json: NodeJson | None = None
        self._rejections = functools.cache(metrics.filter_rejections.labels)  # each plugin's child, looked up once
        config = state.config
        self.gangs = GangManager(framework, config.gang_ttl_s, config.gang_max_span, on_change=state.mark_changed)
        state.reservations = self.gangs.reservations
        # state.snapshot so that scrapes of an idle extender see report ages as of the scrape.
        metrics.watch_cluster(self.state.snapshot, self.state.lock)
        metrics.watch_framework(framework)
        # Read at each scrape, not written by every decision.
        metrics.snapshot_age.set_function(self._view_age)
        metrics.assumed_pods.set_function(self._assumed_now)
        metrics.watch_gangs(self.gangs)
        metrics.watch_layout(self.state.snapshot, self.state.lock, config)

    # ------------------------------------------------------------------ helpers
    def _snapshot(self) -> ClusterSnapshot:
        self.gangs.expire(self.state.clock())
        if self.gangs.active and self.state.generation != self._pruned_at:
            self._pruned_at = self.state.generation
            self.gangs.prune(lambda key: key in self.state.pods or key in self.state.assumed)
        snap = self.state.snapshot()
        if self.state.rebuilds != self._rebuilds_seen:
            # A relist just built the state: millions of long-lived objects at 5,000 nodes. Keep
            # the cyclic collector from walking them again on every full collection (pauses of
            # tens of milliseconds inside decisions); what changes later is collected as usual.
            # The snapshot just replaced (its memo refers back to it) is collected first: frozen
            # objects are never freed.
            self._rebuilds_seen = self.state.rebuilds
            self._name_cache, self._passed, self._node_json = [], None, None  # of the snapshot replaced
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._restore_gangs(snap)
        self._view_age()
        return snap

    def _assumed_now(self) -> int:
        """Pods gpusched bound that the API does not show bound yet, whose hold has not lapsed."""
        now = self.state.clock()
        return sum(1 for _, deadline in list(self.state.assumed.values()) if deadline >= now)

    def _view_age(self) -> float:
        """Seconds since the cluster view last changed, as far as decisions and scrapes have seen."""
        if self.state.changes != self._changes_seen:
            self._changes_seen = self.state.changes
            self.last_change_at = time.time()
        return time.time() - self.last_change_at

    def _restore_gangs(self, snap: ClusterSnapshot) -> None:
        """Gangs whose binding was under way when the last extender stopped hold their plan's GPUs
        again before any decision is made (their members carry the plan)."""
        groups: dict[tuple[str, str], list[PodRequest]] = {}
        for p in self.state.pods.values():
            if p.pod_group:
                groups.setdefault((p.namespace, p.pod_group), []).append(p)
        now = self.state.clock()
        for members in groups.values():
            if any(m.gang_plan and m.node_name for m in members) and not all(m.node_name for m in members):
                self.gangs.restore(snap, members, now)

    def _candidates(
        self, snap: ClusterSnapshot, args: wire.ExtenderArgs | wire.SentArgs
    ) -> tuple[np.ndarray, list[str]]:
        """Snapshot indices of the nodes the request names, and the names gpusched does not know.

        kube-scheduler sends the same list again and again (every node that passed its own
        filters; to prioritize, those that passed gpusched's filter too): the last lists are
        remembered with their indices, and a list equal to one of them costs one comparison, of
        the JSON as sent when the request came from HTTP (wire.SentArgs), which is then not decoded.
        """
        sent = _node_names(args)
        key = sent if sent is not None else self._names(args)  # the names of the Nodes sent
        for at, (known_names, known_snap, indices, unknown) in enumerate(self._name_cache):
            if known_snap is snap and type(known_names) is type(key) and known_names == key:
                if at:  # the most recently used first: the full list must outlive each pod's passed list
                    self._name_cache.insert(0, self._name_cache.pop(at))
                return indices, unknown
        names = key if isinstance(key, list) else self._names(args)
        get = snap.index.get
        found = [get(name) for name in names]
        if None in found:
            unknown = [n for n, i in zip(names, found, strict=True) if i is None]
            found = [i for i in found if i is not None]
        else:
            unknown = []
        indices = np.array(found, dtype=np.intp)
        self._remember_names(key, snap, indices, unknown)
        return indices, unknown

    def _remember_names(
        self, names: list[str] | msgspec.Raw, snap: ClusterSnapshot, indices: np.ndarray, unknown: list[str]
    ) -> None:
        self._name_cache = [(names, snap, indices, unknown), *self._name_cache[: NAME_CACHE - 1]]

    @staticmethod
    def _names(args: wire.ExtenderArgs | wire.SentArgs) -> list[str]:
        """The node names the request carries (NodeNames, else the names of its Nodes)."""
        sent = _node_names(args)
        if isinstance(sent, msgspec.Raw):
            try:
                sent = msgspec.json.decode(sent, type=list[str])
            except msgspec.DecodeError as exc:
                raise wire.MalformedRequest(f"NodeNames: {exc}") from exc
        if sent is not None:
            return sent  # the request's own list: kept, never changed
        items = args.nodes.items if args.nodes is not None else []
        return [str((item.get("metadata") or {}).get("name", "")) for item in items]

    def _decide(self, snap: ClusterSnapshot, pod: PodRequest, nodes: np.ndarray) -> Decision:
        return self.framework.decide(snap, pod, nodes, on_filter=self._count_rejection, score=False, reuse=True)

    def _members(self, pod: PodRequest) -> list[PodRequest]:
        """The pod's gang as the informer sees it, the pod itself included (in its latest copy);
        a member gpusched bound that the informer does not show bound yet counts as bound."""
        members = [
            p
            for p in self.state.pods.values()
            if p.namespace == pod.namespace and p.pod_group == pod.pod_group and p.key != pod.key
        ]
        members.append(self.state.pods.get(pod.key) or pod)
        assumed = self.state.assumed
        return [assumed[m.key][0] if not m.node_name and m.key in assumed else m for m in members]

    def _admit(self, snap: ClusterSnapshot, pod: PodRequest, offered: np.ndarray | None = None) -> Admission:
        """The gang member's planned slot (planning the gang if needed), or why it cannot pass."""
        return self.gangs.admit(snap, pod, self._members(pod), self.state.clock(), offered)

    def _count_rejection(self, plugin: str, nodes: int) -> None:
        self._rejections(plugin).inc(nodes)

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
    def filter(self, args: wire.ExtenderArgs | wire.SentArgs) -> wire.ExtenderFilterResult | msgspec.Raw:
        """The ExtenderFilterResult; over HTTP (wire.SentArgs), when it tells gpusched's decision
        alone, as its JSON."""
        pod = self.state.parse_pod(args.pod)
        if self.offline and not pod.node_name:
            self.state.upsert_pod(args.pod)
        with self.state.lock:
            snap = self._snapshot()
            generation = self.state.generation
            nodes, unknown = self._candidates(snap, args)
            failed = dict.fromkeys(unknown, "gpusched: unknown to gpusched (no Node in its cache yet)")
            if pod.pod_group and not pod.errors:
                admission = self._admit(snap, pod, nodes)
                if admission.slot is None and admission.unschedulable:
                    # Per-node failures: kube-scheduler marks the pod Unschedulable, so preemption
                    # (when it may help) and cluster-autoscaler see it.
                    reason = f"gpusched: {admission.error}"
                    refused = dict.fromkeys(snap.name_array[nodes].tolist(), reason)
                    if admission.resolvable:
                        failed.update(refused)
                        return self._filter_result(args, [], failed, {})
                    return self._filter_result(args, [], failed, refused)
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
        as_sent = isinstance(args, wire.SentArgs) and _node_names(args) is not None
        if as_sent and not failed:  # over HTTP, nothing but gpusched's own decision to tell
            return self._filter_json(snap, pod, generation, decision)
        unresolvable: dict[str, str] = {}
        name_array = snap.name_array
        for rejection in decision.rejections:
            for reason, rejected, resolvable in rejection.grouped():
                target = failed if resolvable else unresolvable
                target.update(dict.fromkeys(name_array[rejected].tolist(), "gpusched: " + reason))
        passed: list[str] = name_array[decision.feasible].tolist()
        # As kube-scheduler will send them to prioritize: as JSON over HTTP.
        self._remember_passed(
            pod, generation, snap, decision, msgspec.Raw(msgspec.json.encode(passed)) if as_sent else passed
        )
        return self._filter_result(args, passed, failed, unresolvable)

    def _remember_passed(
        self, pod: PodRequest, generation: int, snap: ClusterSnapshot, decision: Decision, sent: list[str] | msgspec.Raw
    ) -> None:
        """What prioritize needs to score the passed nodes without filtering them again."""
        if not pod.pod_group:
            with self.state.lock:
                if self.state.generation == generation:
                    self._passed = (pod, generation, snap, decision.feasible)
                    self._remember_names(sent, snap, decision.feasible, [])

    def _filter_json(self, snap: ClusterSnapshot, pod: PodRequest, generation: int, decision: Decision) -> msgspec.Raw:
        """The filter answer (an ExtenderFilterResult) as JSON, joined once from each node's name
        encoded once per snapshot: no Python string per node is made or read (thousands of them,
        cold in the CPU's caches between kube-scheduler's calls, cost more than the decision)."""
        json = self._json_of(snap)
        listed = json.listed(decision.feasible)
        failed: list[bytes | memoryview] = []
        unresolvable: list[bytes | memoryview] = []
        for rejection in decision.rejections:
            for reason, rejected, resolvable in rejection.grouped():
                target = failed if resolvable else unresolvable
                target.append(json.entries(rejected, msgspec.json.encode("gpusched: " + reason)))
        # As kube-scheduler will send them to prioritize.
        self._remember_passed(pod, generation, snap, decision, msgspec.Raw(json.compact(decision.feasible, listed)))
        return msgspec.Raw(
            b"".join(
                [
                    b'{"Nodes":null,"NodeNames":',
                    listed,
                    b',"FailedNodes":',
                    *_json_object(failed),
                    b',"FailedAndUnresolvableNodes":',
                    *_json_object(unresolvable),
                    b',"Error":""}',
                ]
            )
        )

    def _json_of(self, snap: ClusterSnapshot) -> NodeJson:
        current = self._node_json  # once: a bind's rebuild may drop it meanwhile (filter holds no lock here)
        if current is None or current.snapshot is not snap:
            current = self._node_json = NodeJson(snap)
        return current

    @staticmethod
    def _filter_result(
        args: wire.ExtenderArgs | wire.SentArgs, passed: list[str], failed: dict[str, str], unresolvable: dict[str, str]
    ) -> wire.ExtenderFilterResult:
        if _node_names(args) is None and args.nodes is not None:
            keep = set(passed)
            items = [i for i in args.nodes.items if (i.get("metadata") or {}).get("name") in keep]
            return wire.ExtenderFilterResult(
                nodes=wire.NodeList(items=items), failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable
            )
        return wire.ExtenderFilterResult(
            node_names=passed, failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable
        )

    def prioritize(self, args: wire.ExtenderArgs | wire.SentArgs) -> msgspec.Raw:
        """The HostPriority list, one entry per name sent (0 where the pod does not fit), as JSON."""
        pod = self.state.parse_pod(args.pod)
        with self.state.lock:
            snap = self._snapshot()
            nodes, unknown = self._candidates(snap, args)
            if self._filtered_just_now(pod, snap, nodes):
                decision = self.framework.score_feasible(snap, pod, nodes, reuse=True)
            else:
                decision = self.framework.decide(snap, pod, nodes, reuse=True)
            if decision.feasible is nodes:
                levels = self._levels(decision)
            else:
                levels = np.zeros(len(snap), dtype=np.intp)
                levels[decision.feasible] = self._levels(decision)
                levels = levels[nodes]
            known = self._json_of(snap).priorities(nodes, levels)
        if unknown:
            rest = msgspec.json.encode([wire.HostPriority(host=name, score=0) for name in unknown])
            return msgspec.Raw(known[:-1] + (b"," if nodes.size else b"") + rest[1:])
        return msgspec.Raw(known)

    @staticmethod
    def _levels(decision: Decision) -> np.ndarray:
        """kube-scheduler's 0..10 per feasible node: 10 for the best, 0 at SCORE_SPAN points behind."""
        if not decision.feasible.size:
            return np.zeros(0, dtype=np.intp)
        behind = decision.total.max() - decision.total
        levels = np.clip(np.rint(MAX_EXTENDER_SCORE * (1.0 - behind / SCORE_SPAN)), 0, MAX_EXTENDER_SCORE)
        return levels.astype(np.intp)

    def bind(self, args: wire.ExtenderBindingArgs) -> wire.ExtenderBindingResult:
        key = f"{args.pod_namespace}/{args.pod_name}"
        with self.state.lock:
            pod = self.state.pods.get(key)
        if pod is None:
            obj = self.binder.get_pod(args.pod_namespace, args.pod_name)
            if obj is None:
                self.metrics.binds.labels("pod_not_found").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: pod {key} not found")
            pod = self.state.parse_pod(obj)
        if pod.pod_group and not pod.errors:
            return self._bind_gang(args, pod)
        annotations: dict[str, str] = {}
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
            decision = self.framework.decide(snap, pod, np.array([node], dtype=np.intp), score=False)
            gpus = self.framework.choose_gpus(snap, pod, node) if decision.feasible.size else ()
            if (pod.wants_gpu and not gpus) or ((pod.wants_gpu or pod.wants_mig) and not decision.feasible.size):
                self.state.restore_assumed(previous)
                self.metrics.binds.labels("no_longer_fits").inc()
                why = decision.error or decision.reasons.get(node, "no usable GPUs left")
                return wire.ExtenderBindingResult(error=f"gpusched: {key} no longer fits {args.node}: {why}")
            try:
                self.state.assume(pod, args.node, gpus)
            except SnapshotError as exc:
                self.state.mark_changed()
                self.metrics.binds.labels("no_longer_fits").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: {exc}")
        if gpus:
            annotations[ANN_GPU_IDS] = ",".join(str(g) for g in gpus)
        error = self._create_binding(pod, args.pod_uid, args.node, annotations, previous)
        if error:
            return wire.ExtenderBindingResult(error=error)
        self._bound(snap, pod, node, gpus)
        return wire.ExtenderBindingResult()

    def _create_binding(
        self,
        pod: PodRequest,
        uid: str,
        node: str,
        annotations: dict[str, str],
        previous: tuple[PodRequest, float] | None = None,
    ) -> str:
        """Create the pod's Binding (its GPUs already assumed); '' when bound, else why not."""
        try:
            self.binder.bind(pod.namespace, pod.name, uid, node, annotations)
        except Exception as exc:
            if isinstance(exc, TimeoutError) or (isinstance(exc, KubeError) and exc.outcome_unknown):
                # No answer: the pod may be bound. Its GPUs stay held for a while; the informer
                # settles it sooner if the Binding took.
                self.state.bind_outcome_unknown(pod.key)
                self.metrics.binds.labels("outcome_unknown").inc()
                log.warning("bind %s -> %s failed, outcome unknown: %s", pod.key, node, exc)
                return f"gpusched: binding {pod.key} to {node} failed: {exc} (held in case it took)"
            # The API answered no (or was never reached): release the GPUs, kube-scheduler retries.
            self.state.forget_assumed(pod.key)
            # A retry that failed leaves the pod where the bind before it put it (the API may
            # well have it bound there: a 409 says so).
            self.state.restore_assumed(previous)
            self.metrics.binds.labels("api_error").inc()
            log.warning("bind %s -> %s failed: %s", pod.key, node, exc)
            return f"gpusched: binding {pod.key} to {node} failed: {exc}"
        return ""

    def _bound(self, snap: ClusterSnapshot, pod: PodRequest, node: int, gpus: tuple[int, ...]) -> None:
        self.metrics.binds.labels("bound").inc()
        with self.state.lock:  # the snapshot changes in place under the informers
            self.metrics.observe_bound(snap, pod, node, self.state.config)
        log.info("bound %s to %s gpus=%s", pod.key, snap.names[node], list(gpus))

    def _bind_gang(self, args: wire.ExtenderBindingArgs, pod: PodRequest) -> wire.ExtenderBindingResult:
        """Whole or nothing: refuse members until all reached bind, then bind them all (plan first)."""
        key = pod.key
        with self.state.lock:
            snap = self._snapshot()
            node = snap.index.get(args.node)
            if node is None:
                self.metrics.binds.labels("unknown_node").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: node {args.node} is unknown to gpusched")
            where = self._bound_to(key)
            active = self.gangs.active.get((pod.namespace, pod.pod_group))
            if where and active is not None and active.binding and key in active.ready.values():
                # Assumed, its Binding not created yet: a yes now is a promise the API (or a crash)
                # may break, and kube-scheduler never retries a pod it was told is bound.
                self.metrics.binds.labels("gang_waiting").inc()
                return wire.ExtenderBindingResult(
                    error=f"gpusched: gang {pod.pod_group}: its members are being bound now"
                )
            held = self.state.assumed.get(key)
            if where and held is not None and held[1] != np.inf and not self.state.pods.get(key, pod).node_name:
                # Its Binding got no answer: maybe bound, maybe not. Not a yes (kube-scheduler would
                # never retry it); once the informer shows it, or the hold lapses, this settles.
                self.metrics.binds.labels("gang_waiting").inc()
                why = f"{key}'s Binding got no answer; waiting for the API to show it"
                return wire.ExtenderBindingResult(error=f"gpusched: gang {pod.pod_group}: {why}")
            if where:
                # Bound with its gang already (kube-scheduler's copy of the pod is late).
                if where == args.node:
                    return wire.ExtenderBindingResult()
                return wire.ExtenderBindingResult(error=f"gpusched: {key} is already bound to {where}")
            now = self.state.clock()
            members = self._members(pod)
            admission = self.gangs.admit(snap, pod, members, now)
            if admission.slot is None or admission.slot.node != args.node:
                self.metrics.binds.labels("not_planned").inc()
                why = admission.error
                if admission.slot is not None:
                    why = f"gang {pod.pod_group}: rank {admission.slot.rank} is planned on {admission.slot.node}"
                return wire.ExtenderBindingResult(error=f"gpusched: {why}")
            rank = admission.slot.rank
            with snap.without([admission.reservation_key]):
                decision = self.framework.decide(snap, pod, np.array([node], dtype=np.intp), score=False)
            if pod.wants_gpu and not decision.feasible.size:
                self.gangs.not_ready(pod, rank)
                self.metrics.binds.labels("no_longer_fits").inc()
                why = decision.error or decision.reasons.get(node, "no usable GPUs left")
                return wire.ExtenderBindingResult(error=f"gpusched: {key} no longer fits {args.node}: {why}")
            step = self.gangs.reach_bind(pod, rank, members, now)
            if not step.bind:
                self.metrics.binds.labels("gang_waiting").inc()
                return wire.ExtenderBindingResult(error=f"gpusched: {step.wait}")
            gang = self.gangs.active[(pod.namespace, pod.pod_group)]
            latest = {m.key: m for m in members}
            latest[key] = replace(latest.get(key, pod), uid=args.pod_uid or pod.uid)
            jobs = [(r, latest[k], gang.slot(r)) for r, k in step.bind if k in latest]
        try:
            return self._bind_members(gang, pod, jobs)
        finally:
            with self.state.lock:
                self.gangs.binding_done(pod)

    def _bound_to(self, key: str) -> str:
        """Where the API (or a bind of gpusched's own under way) has the pod; '' when unbound."""
        live = self.state.pods.get(key)
        if live is not None and live.node_name:
            return live.node_name
        held = self.state.assumed.get(key)
        return held[0].node_name if held is not None else ""

    def _bind_members(
        self, gang: ActiveGang, caller: PodRequest, jobs: list[tuple[int, PodRequest, Any]]
    ) -> wire.ExtenderBindingResult:
        """Write the plan on every member pod, then create their Bindings; the caller's outcome."""
        annotations = {
            member.key: {
                ANN_GANG_PLAN: gang.plan_id,
                ANN_RANK: str(rank),
                ANN_PLANNED_NODE: slot.node,
                ANN_TOPOLOGY_PATH: slot.path,
                ANN_GPU_IDS: ",".join(str(g) for g in slot.gpus),
            }
            for rank, member, slot in jobs
        }
        if not gang.durable:
            for rank, member, _ in jobs:
                try:
                    self.binder.annotate(member.namespace, member.name, member.uid, annotations[member.key])
                except Exception as exc:  # nothing is bound yet: the gang stays whole, this member comes again
                    with self.state.lock:
                        self.gangs.not_ready(member, rank)
                    self.metrics.binds.labels("gang_plan_not_written").inc()
                    log.warning("gang %s: writing the plan on %s failed: %s", gang.group, member.key, exc)
                    why = f"writing the plan on {member.key} failed, nothing bound: {exc}"
                    return wire.ExtenderBindingResult(error=f"gpusched: gang {gang.group}: {why}")
            with self.state.lock:
                self.gangs.made_durable(caller)
        outcome = ""
        for rank, member, slot in jobs:
            with self.state.lock:
                snap = self._snapshot()
                try:
                    self.state.assume(member, slot.node, slot.gpus, replaces=gang.reservation_key(rank))
                except SnapshotError as exc:
                    self.state.mark_changed()
                    error = f"gpusched: {exc}"
                else:
                    error = ""
            error = error or self._create_binding(member, member.uid, slot.node, annotations[member.key])
            with self.state.lock:
                if error:
                    self.gangs.not_ready(member, rank)
                else:
                    self.gangs.bound(member, rank)
            if not error:
                self._bound(snap, member, snap.index[slot.node], slot.gpus)
            if member.key == caller.key:
                outcome = error
        return wire.ExtenderBindingResult(error=outcome)

    def preempt(self, args: wire.ExtenderPreemptionArgs) -> wire.ExtenderPreemptionResult:
        pod = self.state.parse_pod(args.pod)
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
            if pod.pod_group:
                keep = self._gang_preemption_node(snap, pod, victims)
                victims = {keep: victims[keep]} if keep else {}
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

    def _gang_preemption_node(self, snap: ClusterSnapshot, pod: PodRequest, victims: dict[str, list[str]]) -> str:
        """The one node where preemption may help this gang member ('' for none).

        The gang is planned as if every placed pod of lower priority were gone; the member's node
        in that plan is the only candidate. None when the gang would not fit even then, or when a
        victim there belongs to a gang whose bound members are not all among the victims.
        """
        members = self._members(pod)
        ranks = rank_members(members, pod.min_member)
        if pod.min_member < 1 or pod.key not in ranks or len(ranks) < pod.min_member:
            return ""
        lower = [
            k for k, p in snap.pods.items() if p.priority < pod.priority and not p.name.startswith(RESERVATION_PREFIX)
        ]
        template = member_template(pod)
        fixed = bound_members(snap, members, ranks)
        with snap.without(lower):
            plan = plan_gang(snap, self.framework, template, pod.min_member, self.gangs.max_span, fixed)
        if isinstance(plan, GangRefusal):
            return ""
        node = next(s.node for s in plan.slots if s.rank == ranks[pod.key])
        if node not in victims:
            return ""
        evicted = [p for p in (self.state.pod_by_uid(u) for u in victims[node]) if p is not None]
        keys = {p.key for p in evicted}
        for group in {(p.namespace, p.pod_group) for p in evicted if p.pod_group}:
            bound = {k for k, p in self.state.pods.items() if (p.namespace, p.pod_group) == group and p.node_name}
            if not bound <= keys:
                return ""  # a victim gang goes whole or not at all
        with snap.without(list(keys)):
            decision = self.framework.decide(snap, pod, np.array([snap.index[node]], dtype=np.intp), score=False)
        return node if decision.feasible.size else ""

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
            placed = snap.placements.get(key)
            if placed is not None and placed.mig:
                out["migInstances"] = list(placed.mig)  # the MIG instances it is counted on
        out["boundTo"] = self._bound_to(key) or None  # the API's, or a bind of gpusched's not yet shown
        return out
