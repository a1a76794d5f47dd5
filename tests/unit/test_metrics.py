"""The extender's cluster gauges read the snapshot: GPUs by state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.metrics import ClusterCollector
from tests.builders import mig_gpu, pod, reported_node, whole_gpu


def test_gpus_by_state_count_mig_enabled_gpus_apart() -> None:
    # GPU 0 whole and held, GPU 1 whole and free, GPUs 2 and 3 split into MIG instances.
    gpus = [whole_gpu(0), whole_gpu(1), mig_gpu(2, [("1g.12gb", [])]), mig_gpu(3, [("3g.47gb", [])])]
    snap = ClusterSnapshot([reported_node("n", gpus, allocatable_gpus=2)], [parse_pod(pod("a", 1, node="n"))])
    registry = CollectorRegistry()
    registry.register(ClusterCollector(lambda: snap))
    states = {s: registry.get_sample_value("gpusched_cluster_gpus", {"state": s}) for s in ("free", "allocated", "mig")}
    assert states == {"free": 1.0, "allocated": 1.0, "mig": 2.0}
