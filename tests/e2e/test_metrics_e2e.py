"""A real Prometheus, configured from manifests/prometheus/, scrapes gpusched as installed on the
real control plane (extender and agents, see install_env.py) while kube-scheduler places plain,
inference and gang pods; then every query of every dashboard panel must return data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localcluster import k8s
from tests.e2e.install_env import IMAGE, MODEL, Installed, installed
from tests.prometheus import Prometheus, dashboard_queries, grafana_expr, metric_names, scrape_config_for

pytestmark = pytest.mark.e2e

__all__ = ["installed"]


def traffic(env: Installed, n: int) -> list[str]:
    """One round: a plain pod, an inference pod whose weights one node caches, a gang of two, a pod no
    node can take (CUDA), and a malformed request. Returns the pods that must be bound."""
    env.pod(f"plain-{n}", 1)
    env.pod(f"infer-{n}", 1, image=IMAGE, annotations={"gpusched.io/model": MODEL, "gpusched.io/workload": "inference"})
    for rank in range(2):
        labels = {"scheduling.x-k8s.io/pod-group": f"gang-{n}", "batch.kubernetes.io/job-completion-index": str(rank)}
        env.pod(
            f"gang-{n}-{rank}",
            1,
            labels=labels,
            annotations={"gpusched.io/min-member": "2", "gpusched.io/workload": "training"},
        )
    env.pod(f"too-new-cuda-{n}", 1, annotations={"gpusched.io/cuda": "99.0"})
    answer = httpx.post(f"{env.extender_url}/filter", content=b"{not json", timeout=5).json()
    assert answer["Error"]
    return [f"plain-{n}", f"infer-{n}", f"gang-{n}-0", f"gang-{n}-1"]


@pytest.fixture(scope="module")
def prometheus(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    workdir: Path = tmp_path_factory.mktemp("prometheus-e2e")
    prom = Prometheus(workdir, scrape_config_for(workdir, installed.stand_ins))
    try:
        prom.start()
        prom.wait_up({"gpusched-extender": 1, "gpusched-agent": 2})
        # Two rounds some scrapes apart, so that series born in the first have a rate in the second.
        for n in range(2):
            for name in traffic(installed, n):
                k8s.wait_for_pod_node(installed.api, "default", name, timeout=90)
            prom.wait_scrapes(3)
        prom.wait(lambda: prom.finite("gpusched_gangs_placed_total") == [2.0], 30, "both gangs to be scraped")
        prom.wait(lambda: prom.finite('sum(gpusched_binds_total{result="bound"})') == [8.0], 30, "8 binds scraped")
        prom.wait_scrapes(2)  # a second sample of the series born in the last round
        yield prom
    finally:
        prom.stop()


def test_prometheus_finds_the_pods_by_their_annotations(prometheus: Prometheus) -> None:
    jobs = sorted((t["labels"]["job"], t["labels"]["pod"]) for t in prometheus.targets())
    assert jobs == [
        ("gpusched-agent", "gpusched-agent-gpu-a"),
        ("gpusched-agent", "gpusched-agent-gpu-b"),
        ("gpusched-extender", "gpusched-extender-0"),
    ]


def test_what_was_placed_shows_in_the_metrics(prometheus: Prometheus) -> None:
    assert prometheus.finite('sum(gpusched_cluster_gpus{state=~"allocated|partial"})') == [8.0]
    assert prometheus.finite('gpusched_predicted_cold_start_seconds_count{workload="inference"}') == [2.0]
    assert prometheus.finite('sum(gpusched_filter_rejections_total{plugin="cuda"})')[0] >= 4
    assert prometheus.finite('sum(gpusched_extender_requests_total{outcome="bad_request"})') == [2.0]
    assert prometheus.finite("min(gpusched_informer_synced)") == [1.0]
    assert sorted(prometheus.finite("count by (node) (gpusched_agent_gpu_healthy == 1)")) == [8.0, 8.0]


def test_every_dashboard_panel_returns_data(prometheus: Prometheus) -> None:
    queries = dashboard_queries()
    empty = [f"{board}: {title}: {expr}" for board, title, expr in queries if not prometheus.finite(grafana_expr(expr))]
    assert not empty, "panels without data:\n" + "\n".join(empty)
    boards = {board for board, _, _ in queries}
    assert len(boards) == 5
    assert any(n.startswith("gpusched_agent_") for _, _, e in queries for n in metric_names(e))
