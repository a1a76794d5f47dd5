"""Every metric the extender exports, defined once. Base units, `_total` counters, bounded labels
(verbs, plugin names, resources; never a pod)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Framework
from scheduler.core.gang import GangManager
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.cold_start import DEFAULT_PRIORS, ColdStart, ColdStartArgs, needed_bytes, predicted_seconds
from scheduler.plugins.fragmentation import Fragmentation, FragmentationArgs

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COLD_START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
WORKLOADS = ("training", "inference")

log = logging.getLogger("gpusched.metrics")


class ClusterCollector(Collector):
    """GPU allocation of the current snapshot, computed fresh on each scrape, and
    gpusched_gpu_assignment_disagreements_total: pods whose kubelet (the agent's PodResources
    report) holds other GPUs than their gpusched.io/gpu-ids named, each counted once
    (scheduler/core/gpu_assignment.py)."""

    def __init__(self, snapshot: Callable[[], ClusterSnapshot | None], lock: threading.RLock | None = None) -> None:
        self.snapshot = snapshot
        self.lock = lock or threading.RLock()  # the snapshot changes in place: read it under its lock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self.lock:
            yield from self._collect()

    def _collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self.snapshot()
        gpus = GaugeMetricFamily("gpusched_cluster_gpus", "GPUs in gpusched's view by state", labels=["state"])
        nodes = GaugeMetricFamily(
            "gpusched_cluster_nodes", "Nodes in gpusched's view by report state", labels=["report"]
        )
        if snap is not None and len(snap):
            valid = snap.gpu_valid & snap.gpu_healthy
            free = (valid & (snap.gpu_milli_free >= 1000)).sum()
            partial = (valid & (snap.gpu_milli_free > 0) & (snap.gpu_milli_free < 1000)).sum()
            gpus.add_metric(["free"], float(free))
            gpus.add_metric(["partial"], float(partial))
            gpus.add_metric(["allocated"], float(valid.sum() - free - partial))
            gpus.add_metric(["unhealthy"], float((snap.gpu_valid & ~snap.gpu_healthy).sum()))
            gpus.add_metric(["mig"], float(snap.gpu_mig.sum()))  # split into MIG instances: no whole GPU
            fresh = snap.has_report & np.isfinite(snap.report_age)
            nodes.add_metric(["present"], float(fresh.sum()))
            nodes.add_metric(["missing"], float((~snap.has_report).sum()))
            nodes.add_metric(["unreadable"], float((snap.has_report & ~fresh).sum()))
        yield gpus
        yield nodes
        yield CounterMetricFamily(
            "gpusched_gpu_assignment_disagreements",
            "Pods the kubelet gave other GPUs than gpusched.io/gpu-ids named (the kubelet's are counted)",
            value=snap.assignments.total if snap is not None else 0,
        )


class GangCollector(Collector):
    """Gang plans and reservations, read from the manager on each scrape."""

    def __init__(self, gangs: GangManager) -> None:
        self.gangs = gangs

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "gpusched_gangs_pending", "Gangs planned but not yet fully bound", value=self.gangs.pending()
        )
        held = sum(len(r.gpu_ids) for r in self.gangs.reservations())
        yield GaugeMetricFamily(
            "gpusched_gang_reserved_gpus", "GPUs reserved for gang members not yet bound", value=held
        )
        yield CounterMetricFamily(
            "gpusched_gangs_placed", "Gangs whose members were all bound", value=self.gangs.placed_total
        )
        yield GaugeMetricFamily(
            "gpusched_gangs_partly_bound",
            "Gangs with some members bound and others not: their GPUs are held and nothing trains yet",
            value=self.gangs.partly_bound(),
        )
        yield CounterMetricFamily(
            "gpusched_gang_reservations_expired",
            "Gang plans let go because no member made progress for the reservation TTL (nothing of them bound)",
            value=self.gangs.expired_total,
        )
        yield CounterMetricFamily(
            "gpusched_gang_replans",
            "Gang plans made again at once because kube-scheduler no longer offered a planned node",
            value=self.gangs.replans_total,
        )


class FrameworkCollector(Collector):
    """Plugin faults the framework counted (scheduler/core/framework.py), read on each scrape."""

    def __init__(self, framework: Framework) -> None:
        self.framework = framework

    def collect(self) -> Iterator[CounterMetricFamily]:
        bad = CounterMetricFamily(
            "gpusched_plugin_invalid_scores",
            "Scores a plugin gave that were NaN, infinite or outside 0..100 (each counted as 0)",
            labels=["plugin"],
        )
        for plugin, _ in self.framework.scores:
            bad.add_metric([plugin.name], float(self.framework.bad_scores.get(plugin.name, 0)))
        yield bad


class ExtenderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "gpusched_extender_request_duration_seconds",
            "Time to answer kube-scheduler, by verb",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "gpusched_extender_requests_total", "Extender requests by verb and outcome", ["verb", "outcome"], registry=r
        )
        self.forwarded = Counter(
            "gpusched_extender_forwarded_total", "Verbs a standby replica passed on to the leader", ["verb"], registry=r
        )
        self.leader = Gauge(
            "gpusched_extender_leader", "1 while this replica answers the verbs itself (holds the Lease)", registry=r
        )
        self.leader.set(1)  # without leader election the only replica answers
        self.filter_rejections = Counter(
            "gpusched_filter_rejections_total", "Nodes turned away by a filter plugin", ["plugin"], registry=r
        )
        self.binds = Counter("gpusched_binds_total", "Bind attempts by result", ["result"], registry=r)
        self.watch_restarts = Counter(
            "gpusched_watch_restarts_total",
            "Informer restarts by resource and cause (gone, connection, http_4xx, http_5xx, read, other)",
            ["resource", "reason"],
            registry=r,
        )
        self.informer_synced = Gauge(
            "gpusched_informer_synced",
            "1 while the informer's view is current: listed, and not failing for over informerGraceSeconds",
            ["resource"],
            registry=r,
        )
        self.snapshot_age = Gauge(
            "gpusched_snapshot_age_seconds", "Seconds since the cluster view last changed", registry=r
        )
        self.assumed_pods = Gauge(
            "gpusched_assumed_pods", "Pods bound by gpusched that the API does not show bound yet", registry=r
        )
        self.predicted_cold_start = Histogram(
            "gpusched_predicted_cold_start_seconds",
            "Predicted seconds to pull the image and fetch and load the weights of pods gpusched bound, by workload"
            " and weights identity (gpusched.io/model, empty without one)",
            ["workload", "model"],
            buckets=COLD_START_BUCKETS,
            registry=r,
        )

    def watch_framework(self, framework: Framework) -> None:
        self.registry.register(FrameworkCollector(framework))

    def watch_cluster(
        self, snapshot: Callable[[], ClusterSnapshot | None], lock: threading.RLock | None = None
    ) -> None:
        self.registry.register(ClusterCollector(snapshot, lock))

    def watch_gangs(self, gangs: GangManager) -> None:
        self.registry.register(GangCollector(gangs))

    def watch_layout(
        self, snapshot: Callable[[], ClusterSnapshot | None], lock: threading.RLock, config: SchedulerConfig
    ) -> None:
        self.registry.register(LayoutCollector(snapshot, lock, config))

    def observe_bound(self, snap: ClusterSnapshot, pod: PodRequest, node: int, config: SchedulerConfig) -> None:
        """Record the predicted cold start of `pod`, just bound to node index `node` of `snap`.

        The prediction is the cold-start plugin's (scheduler/plugins/cold_start.py, with its
        pluginArgs when configured). Pods that need no known image or weights bytes are not observed:
        there is nothing to predict for them. Never raises: the pod is already bound.
        """
        try:
            try:
                args = ColdStart.parse(config.plugin_args.get("cold-start"))
                priors = args.priors() if isinstance(args, ColdStartArgs) else DEFAULT_PRIORS
            except ConfigError:
                priors = DEFAULT_PRIORS
            if not any(needed_bytes(snap, pod, priors)):
                return
            seconds = float(predicted_seconds(snap, pod, np.array([node], dtype=np.intp), priors)[0])
            workload = pod.workload if pod.workload in WORKLOADS else "other"
            self.predicted_cold_start.labels(workload, pod.model).observe(seconds)
        except Exception:  # a metric must never turn a successful bind into an error
            log.exception("predicting the cold start of %s failed", pod.key)


class LayoutCollector(Collector):
    """How usable the free GPUs are, and how many nodes report stale data; computed on each scrape.

    - gpusched_cluster_fragmented_gpus: free GPU capacity (in GPUs) that the typical pods cannot use,
      by the fragmentation plugin's measure (FGD, scheduler/plugins/fragmentation.py), summed over
      nodes. Typical pods are the plugin's `typicalPods` when configured, else the shapes of the pods
      running now (one whole GPU when there are none).
    - gpusched_cluster_gpu_fragmentation_ratio: that over all free GPU capacity (0 when none is free).
    - gpusched_cluster_stale_reports: nodes whose GPUNodeReport is older than reportTTLSeconds.
    - gpusched_cluster_gpu_nodes_without_fresh_report: GPU nodes (allocatable GPUs, or a report)
      whose report is missing, unreadable or older than reportTTLSeconds: the agent never wrote,
      cannot write, or is down.
    """

    def __init__(
        self, snapshot: Callable[[], ClusterSnapshot | None], lock: threading.RLock, config: SchedulerConfig
    ) -> None:
        self.snapshot = snapshot
        self.lock = lock
        self.ttl = config.report_ttl_s
        args = Fragmentation.parse(config.plugin_args.get("fragmentation"))
        assert isinstance(args, FragmentationArgs)
        self.typical = args.source(copies=False)  # FGD's measure: what one more typical pod could use

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fragmented = GaugeMetricFamily(
            "gpusched_cluster_fragmented_gpus", "Free GPU capacity, in GPUs, that the typical pods cannot use"
        )
        ratio = GaugeMetricFamily(
            "gpusched_cluster_gpu_fragmentation_ratio", "Share of free GPU capacity that the typical pods cannot use"
        )
        stale = GaugeMetricFamily(
            "gpusched_cluster_stale_reports", "Nodes whose GPUNodeReport is older than reportTTLSeconds"
        )
        unreported = GaugeMetricFamily(
            "gpusched_cluster_gpu_nodes_without_fresh_report",
            "GPU nodes whose GPUNodeReport is missing, unreadable or older than reportTTLSeconds",
        )
        with self.lock:
            snap = self.snapshot()
            if snap is not None and len(snap):
                gpu_nodes = (snap.gpu_alloc > 0) | snap.has_report
                fresh = snap.has_report & np.isfinite(snap.report_age) & (snap.report_age <= self.ttl)
                unreported.add_metric([], float((gpu_nodes & ~fresh).sum()))
                milli = self.typical.state(snap).milli(np.arange(len(snap), dtype=np.intp))
                usable = snap.gpu_valid & snap.gpu_healthy
                free = float(np.where(usable, snap.gpu_milli_free, 0).sum())
                lost = float(milli.sum())
                fragmented.add_metric([], lost / 1000.0)
                ratio.add_metric([], lost / free if free > 0 else 0.0)
                stale.add_metric([], float((snap.has_report & (snap.report_age > self.ttl)).sum()))
        yield fragmented
        yield ratio
        yield stale
        yield unreported
