"""Every metric the extender exports, defined once. Base units, `_total` counters, bounded labels
(verbs, plugin names, resources; never a pod)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.core.gang import GangManager
from scheduler.core.snapshot import ClusterSnapshot

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ClusterCollector(Collector):
    """GPU allocation of the current snapshot, computed fresh on each scrape."""

    def __init__(self, snapshot: Callable[[], ClusterSnapshot | None]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
            fresh = snap.has_report & np.isfinite(snap.report_age)
            nodes.add_metric(["present"], float(fresh.sum()))
            nodes.add_metric(["missing"], float((~snap.has_report).sum()))
            nodes.add_metric(["unreadable"], float((snap.has_report & ~fresh).sum()))
        yield gpus
        yield nodes


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
        yield CounterMetricFamily(
            "gpusched_gang_reservations_expired", "Gang plans released because members did not arrive in time",
            value=self.gangs.expired_total,
        )  # fmt: skip


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
        self.filter_rejections = Counter(
            "gpusched_filter_rejections_total", "Nodes turned away by a filter plugin", ["plugin"], registry=r
        )
        self.binds = Counter("gpusched_binds_total", "Bind attempts by result", ["result"], registry=r)
        self.watch_restarts = Counter(
            "gpusched_watch_restarts_total",
            "Informer restarts by resource and reason",
            ["resource", "reason"],
            registry=r,
        )
        self.informer_synced = Gauge(
            "gpusched_informer_synced", "1 once the informer has listed its resource", ["resource"], registry=r
        )
        self.snapshot_age = Gauge(
            "gpusched_snapshot_age_seconds", "Seconds since the cluster view last changed", registry=r
        )
        self.assumed_pods = Gauge(
            "gpusched_assumed_pods", "Pods bound by gpusched that the API does not show bound yet", registry=r
        )

    def watch_cluster(self, snapshot: Callable[[], ClusterSnapshot | None]) -> None:
        self.registry.register(ClusterCollector(snapshot))

    def watch_gangs(self, gangs: GangManager) -> None:
        self.registry.register(GangCollector(gangs))
