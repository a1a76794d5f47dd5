"""ClusterState: what the informers saw, plus pods gpusched has bound but the API does not yet show
bound (the assume-cache), turned into a ClusterSnapshot on demand.

All mutation happens under one lock; the snapshot is rebuilt only after something changed, and
report ages are refreshed on every read so a report goes stale on time even when nothing changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.objects import node_from_object, parse_time, with_report
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.state.pull_throughput import PullThroughput

TERMINAL_PHASES = ("Succeeded", "Failed")
ASSUME_TTL_S = 60.0


class ClusterState:
    def __init__(self, config: SchedulerConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.nodes: dict[str, NodeState] = {}
        self.reports: dict[str, Mapping[str, Any]] = {}
        self.pods: dict[str, PodRequest] = {}  # GPU pods that are not finished, bound or not
        self.uids: dict[str, str] = {}  # pod uid -> key
        self.assumed: dict[str, tuple[PodRequest, float]] = {}  # key -> (pod with node and GPUs, deadline)
        self._snapshot: ClusterSnapshot | None = None
        self._report_times = np.zeros(0)
        self._built_at = 0.0
        self._static_report_times: dict[str, float] = {}
        self.changes = 0  # bumped on every change; for metrics and tests
        self.pull = PullThroughput()  # learned from kubelet "Pulled" events; overrides reported rates
        # Pods that hold GPUs without existing (gang reservations), set by whoever owns them.
        self.reservations: Callable[[], list[PodRequest]] = list

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
            self._changed()

    # -------------------------------------------------------------- informer input
    def _changed(self) -> None:
        self._snapshot = None
        self.changes += 1

    def replace_nodes(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.nodes = {}
            for item in items:
                self.upsert_node(item)
            self._changed()

    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        node = node_from_object(obj, self.config.gpu_resource)
        if node.name:
            with self.lock:
                self.nodes[node.name] = node
                self._changed()

    def delete_node(self, obj: Mapping[str, Any]) -> None:
        with self.lock:
            self.nodes.pop(str((obj.get("metadata") or {}).get("name", "")), None)
            self._changed()

    def replace_reports(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.reports = {}
            for item in items:
                self.upsert_report(item)
            self._changed()

    def upsert_report(self, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if name:
            with self.lock:
                self.reports[name] = obj
                self._changed()

    def delete_report(self, obj: Mapping[str, Any]) -> None:
        with self.lock:
            self.reports.pop(str((obj.get("metadata") or {}).get("name", "")), None)
            self._changed()

    def replace_pull_events(self, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            self.observe_pull_event(item)

    def observe_pull_event(self, obj: Mapping[str, Any]) -> None:
        sizes = {}
        node = self.nodes.get(str((obj.get("source") or {}).get("host", "")))
        if node is not None:
            sizes = node.images
        if self.pull.observe_event(obj, sizes):
            with self.lock:
                self._changed()

    def replace_pods(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.pods, self.uids = {}, {}
            for item in items:
                self.upsert_pod(item)
            self._changed()

    def upsert_pod(self, obj: Mapping[str, Any]) -> None:
        phase = (obj.get("status") or {}).get("phase")
        deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp")) and not (obj.get("spec") or {}).get(
            "nodeName"
        )
        pod = parse_pod(obj, self.config.gpu_resource)
        with self.lock:
            if phase in TERMINAL_PHASES or deleting or not pod.wants_gpu:
                self._forget(pod.key)
                return
            self.pods[pod.key] = pod
            if pod.uid:
                self.uids[pod.uid] = pod.key
            if pod.node_name:
                self.assumed.pop(pod.key, None)  # the API caught up with our bind
            self._changed()

    def delete_pod(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self.lock:
            self._forget(f"{meta.get('namespace', 'default')}/{meta.get('name', '')}")

    def _forget(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self.uids.pop(pod.uid, None)
        if self.assumed.pop(key, None) is not None or pod is not None:
            self._changed()

    # ---------------------------------------------------------------- assume-cache
    def assume(self, pod: PodRequest, node: str, gpus: tuple[int, ...]) -> None:
        """Hold `gpus` on `node` for `pod` until the API shows it bound (or the TTL passes)."""
        with self.lock:
            placed = replace(pod, node_name=node, gpu_ids=gpus)
            self.assumed[pod.key] = (placed, self.clock() + ASSUME_TTL_S)
            if self._snapshot is not None and node in self._snapshot.index:
                self._snapshot.place(placed, self._snapshot.index[node], gpus)
                self.changes += 1
            else:
                self._changed()

    def mark_changed(self) -> None:
        with self.lock:
            self._changed()

    def forget_assumed(self, key: str) -> None:
        with self.lock:
            if self.assumed.pop(key, None) is not None:
                self._changed()

    # -------------------------------------------------------------------- snapshot
    def snapshot(self) -> ClusterSnapshot:
        """The current snapshot (rebuilt if anything changed), with report ages as of now."""
        with self.lock:
            now = self.clock()
            expired = [k for k, (_, deadline) in self.assumed.items() if deadline < now]
            for key in expired:
                del self.assumed[key]
            if expired:
                self._changed()
            if self._snapshot is None:
                self._snapshot = self._build(now)
            snap = self._snapshot
            # A report stamped ahead of this clock (node clock skew) is as new as can be: age 0.
            snap.report_age[:] = np.where(
                np.isfinite(self._report_times), np.maximum(now - self._report_times, 0.0), np.inf
            )
            return snap

    def _build(self, now: float) -> ClusterSnapshot:
        nodes = [
            self.pull.apply(with_report(node, self.reports.get(name), now)) for name, node in sorted(self.nodes.items())
        ]
        times = []
        for node in nodes:
            report = self.reports.get(node.name)
            if report:
                stamp = parse_time((report.get("spec") or {}).get("reportTime"))
            else:
                stamp = self._static_report_times.get(node.name)
            times.append(stamp if stamp is not None else np.inf)
        # A report that exists but has no readable time is as good as infinitely old.
        self._report_times = np.array(
            [(-np.inf if (t == np.inf and n.has_report) else t) for t, n in zip(times, nodes, strict=True)]
            if nodes
            else [],
            dtype=np.float64,
        )
        bound = [p for p in self.pods.values() if p.node_name]
        # An assumed pod counts until the informer shows it bound (then it is in `bound`).
        assumed = [p for k, (p, _) in self.assumed.items() if not (k in self.pods and self.pods[k].node_name)]
        self._built_at = now
        held = {p.key for p in bound} | {p.key for p in assumed}
        reserved = [r for r in self.reservations() if r.key not in held]
        return ClusterSnapshot(nodes, bound + assumed + reserved, self.config.tiers)

    def pod_by_uid(self, uid: str) -> PodRequest | None:
        with self.lock:
            key = self.uids.get(uid)
            return self.pods.get(key) if key else None
