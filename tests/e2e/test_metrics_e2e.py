"""A real Prometheus, configured from manifests/prometheus/, scrapes gpusched as installed on the
real control plane (extender and agents, see install_env.py) and one replica of the inference
Deployment template (workloads/inference/templates/, in namespace default, serving the model the
inference pods name) while kube-scheduler places plain, inference and gang pods; then every query
of every dashboard panel must return data."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from localcluster import k8s
from tests import install
from tests.e2e.install_env import IMAGE, MODEL, Installed, installed, spawn, wait_http
from tests.prometheus import (
    REPO,
    Prometheus,
    StandIn,
    dashboard_queries,
    grafana_expr,
    loopback_address,
    metric_names,
    scrape_config_for,
)
from workloads.gpt import GPTConfig
from workloads.inference.cache import ModelRef
from workloads.tools.make_model import write_model

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


def inference_replica(env: Installed, workdir: Path) -> StandIn:
    """One pod of the inference Deployment template: its command on CPU, serving a tiny model
    written under MODEL's name, on its own loopback address at the template's port."""
    deployment = next(
        d
        for d in yaml.safe_load_all((REPO / "workloads/inference/templates/deployment.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    container = install.container(deployment)
    port = container["ports"][0]["containerPort"]
    hub = workdir / "hub"
    tiny = GPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    write_model(hub, ModelRef.parse(MODEL), tiny, seed=1)
    ip = loopback_address()
    argv = [sys.executable, *container["command"][1:], "--model", MODEL, "--hf-cache", str(hub), "--device", "cpu"]
    argv += ["--host", ip, "--port", str(port), "--log-level", "warning"]
    process = spawn(env, "inference", install.LocalCommand(argv, {"HF_HUB_OFFLINE": "1"}, {}))
    wait_http(process, f"http://{ip}:{port}/readyz")
    return StandIn(deployment, "tiny-gpt-0", ip)


@pytest.fixture(scope="module")
def prometheus(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    workdir: Path = tmp_path_factory.mktemp("prometheus-e2e")
    stand_ins = [*installed.stand_ins, inference_replica(installed, workdir)]
    prom = Prometheus(workdir, scrape_config_for(workdir, stand_ins))
    try:
        prom.start()
        prom.wait_up({"gpusched-extender": 1, "gpusched-agent": 2})
        prom.wait(lambda: prom.finite('up{job="gpusched-inference"}') == [1.0], 60, "the inference replica")
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
    jobs = sorted((t["labels"]["job"], t["labels"]["namespace"], t["labels"]["pod"]) for t in prometheus.targets())
    assert jobs == [
        ("gpusched-agent", "gpusched-system", "gpusched-agent-gpu-a"),
        ("gpusched-agent", "gpusched-system", "gpusched-agent-gpu-b"),
        ("gpusched-extender", "gpusched-system", "gpusched-extender-0"),
        ("gpusched-inference", "default", "tiny-gpt-0"),  # outside gpusched-system
    ]


def test_predicted_and_measured_cold_start_meet_per_model(prometheus: Prometheus) -> None:
    exprs = [e for _, title, e in dashboard_queries() if title == "Predicted against measured cold start, by model"]
    assert len(exprs) == 2  # predicted, then measured
    predicted, measured = ({s["metric"]["model"]: s for s in prometheus.query(grafana_expr(e))} for e in exprs)
    assert sorted(predicted) == sorted(measured) == [MODEL]
    assert float(measured[MODEL]["value"][1]) > 0 and float(predicted[MODEL]["value"][1]) > 0


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
