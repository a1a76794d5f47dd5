"""The alerting rules through promtool, and the dashboards' queries through a real Prometheus that
scrapes a real extender process (offline mode, run with the Deployment's arguments and ConfigMap).

The extender serves a scenario file here, so the panels that need the agents or the informers of a
live cluster are left to tests/e2e/test_metrics_e2e.py, which checks every panel.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scheduler.core.scenario import pod_object
from tests import install
from tests.prometheus import (
    MANIFESTS,
    PROMETHEUS_DIR,
    Prometheus,
    StandIn,
    dashboard_queries,
    grafana_expr,
    loopback_address,
    metric_names,
    promtool,
    scrape_config_for,
)

LIVE_ONLY = {"gpusched_informer_synced", "gpusched_watch_restarts"}  # set by informers, absent offline
IMAGE = "ghcr.io/acme/llm-server:1.4"
MODEL = "acme/llm-8b@main"
GANG = {"scheduling.x-k8s.io/pod-group": "g"}
SCENARIO: dict[str, Any] = {
    "nodeTypes": {
        "h100": {"gpus": 8, "gpuModel": "H100-80GB", "gpuMemory": "80Gi", "interconnect": "nvswitch", "cuda": "12.4"},
        "a100": {
            "gpus": 8,
            "gpuModel": "A100-40GB",
            "gpuMemory": "40Gi",
            "interconnect": "nvlink-pairs",
            "cuda": "12.2",
        },
        "l4": {"gpus": 4, "gpuModel": "L4", "gpuMemory": "24Gi", "interconnect": "pcie", "cuda": "12.2"},
    },
    "nodes": [
        {"name": "h100-0", "type": "h100", "images": {IMAGE: "15Gi"}, "models": {MODEL: "16Gi"}},
        {"name": "h100-1", "type": "h100"},
        {"name": "a100-0", "type": "a100"},
        {"name": "l4-0", "type": "l4", "reportAgeSeconds": 600},
    ],
    "pods": [
        {"name": "running-0", "node": "a100-0", "gpus": 3, "gpuIds": [0, 1, 2]},
        *({"name": f"job-{i}", "gpus": 1} for i in range(4)),
        *({"name": f"big-{i}", "gpus": 1, "annotations": {"gpusched.io/gpu-memory": "60Gi"}} for i in range(2)),
        *(
            {
                "name": f"infer-{i}",
                "gpus": 1,
                "image": IMAGE,
                "annotations": {"gpusched.io/model": MODEL, "gpusched.io/workload": "inference"},
            }
            for i in range(2)
        ),
        *(
            {
                "name": f"g-{i}",
                "gpus": 4,
                "labels": {**GANG, "batch.kubernetes.io/job-completion-index": str(i)},
                "annotations": {"gpusched.io/min-member": "2"},
            }
            for i in range(2)
        ),
    ],
}
NODES = [n["name"] for n in SCENARIO["nodes"]]
PODS = {p["name"]: p for p in SCENARIO["pods"]}


# ------------------------------------------------------------------------------------ promtool
def test_promtool_checks_the_alerting_rules() -> None:
    result = promtool("check", "rules", "gpusched-alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_unit_tests_every_alert() -> None:
    result = promtool("test", "rules", "gpusched-alerts-test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROMETHEUS_DIR / "gpusched-alerts.yaml").read_text())
    tests = yaml.safe_load((PROMETHEUS_DIR / "gpusched-alerts-test.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if c["exp_alerts"]}
    assert tested == alerts, f"alerts never seen firing in the unit tests: {alerts - tested}"


def test_promtool_accepts_the_scrape_config_as_run(tmp_path: Path) -> None:
    config = scrape_config_for(tmp_path, [])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ extender and real Prometheus
@dataclass
class Scraped:
    extender: str
    prometheus: Prometheus


def start_extender(workdir: Path, ip: str) -> tuple[subprocess.Popen[bytes], str]:
    """The extender Deployment's container, run offline on the scenario at `ip`:<its port>."""
    objects = install.build(MANIFESTS)
    deploy = install.find(objects, "Deployment", "gpusched-extender")
    scenario = workdir / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    field_refs = {"metadata.name": "gpusched-extender-0", "metadata.namespace": "gpusched-system", "status.podIP": ip}
    cmd = install.local_command(
        objects,
        deploy,
        workdir / "extender",
        flags={"--host": ip},
        extra=[f"--cluster-file={scenario}"],
        field_refs=field_refs,
    )
    port = next(a.split("=")[1] for a in cmd.argv if a.startswith("--port="))
    log = (workdir / "extender.log").open("ab")
    proc = subprocess.Popen(
        cmd.argv,
        env={**os.environ, **cmd.env},
        cwd=cmd.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{ip}:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"extender exited: {(workdir / 'extender.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("extender not ready")
        time.sleep(0.2)


class Scheduler:
    """Does what kube-scheduler does with an extender: filter, prioritize, bind (and preempt)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def schedule(self, name: str, waits_for_gang: bool = False) -> str:
        """`waits_for_gang`: the pod is a gang member before the last, whose bind gpusched refuses
        until every member has reached it (kube-scheduler retries it; the last member's bind binds it)."""
        pod = pod_object(PODS[name])
        filtered = self.http.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": NODES}).json()
        assert not filtered.get("Error"), filtered
        feasible = filtered["NodeNames"]
        scores = self.http.post("/prioritize", json={"Pod": pod, "Nodes": None, "NodeNames": feasible}).json()
        best = max(scores, key=lambda s: s["Score"])["Host"]
        meta = pod["metadata"]
        bound = self.http.post(
            "/bind", json={"PodName": meta["name"], "PodNamespace": "default", "PodUID": meta["uid"], "Node": best}
        ).json()
        if waits_for_gang:
            assert "members ready to bind" in bound.get("Error", ""), bound
        else:
            assert not bound.get("Error"), bound
        return str(best)

    def round(self, n: int) -> None:
        """One round of traffic: plain, large-memory, inference and gang pods, odd input, preemption."""
        self.schedule(f"job-{2 * n}")
        self.schedule(f"job-{2 * n + 1}")
        assert self.schedule(f"big-{n}").startswith("h100")
        self.schedule(f"infer-{n}")
        self.schedule(f"g-{n}", waits_for_gang=n == 0)
        assert self.http.post("/filter", content=b"{not json").json()["Error"]
        victims = {"a100-0": {"Pods": [{"UID": "uid-running-0"}], "NumPDBViolations": 0}}
        pod = pod_object(PODS["big-0"])
        body = {"Pod": pod, "NodeNameToVictims": None, "NodeNameToMetaVictims": victims}
        answer = self.http.post("/preempt", json=body)
        assert answer.status_code == 200


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    workdir = tmp_path_factory.mktemp("prometheus")
    ip = loopback_address()
    objects = install.build(MANIFESTS)
    proc, url = start_extender(workdir, ip)
    stand_in = StandIn(install.find(objects, "Deployment", "gpusched-extender"), "gpusched-extender-0", ip)
    prometheus = Prometheus(workdir, scrape_config_for(workdir, [stand_in]))
    try:
        prometheus.start()
        prometheus.wait_up({"gpusched-extender": 1})
        scheduler = Scheduler(url)
        # Two rounds a few scrapes apart, so that series born in the first have a rate in the second.
        scheduler.round(0)
        prometheus.wait_scrapes(3)
        scheduler.round(1)
        prometheus.wait(
            lambda: prometheus.finite('gpusched_binds_total{result="bound"}') == [10.0], 30, "the binds to be scraped"
        )
        prometheus.wait_scrapes(2)  # a second sample of the series born in round 1
        yield Scraped(url, prometheus)
    finally:
        prometheus.stop()
        proc.terminate()
        proc.wait(10)


def test_relabelling_makes_the_extender_job(scraped: Scraped) -> None:
    (target,) = scraped.prometheus.targets()
    assert target["labels"]["job"] == "gpusched-extender"
    assert target["labels"]["namespace"] == "gpusched-system"
    assert target["labels"]["pod"] == "gpusched-extender-0"
    assert target["scrapeUrl"] == f"{scraped.extender}/metrics"


def test_gangs_and_cold_starts_are_counted(scraped: Scraped) -> None:
    prom = scraped.prometheus
    assert prom.finite("gpusched_gangs_placed_total") == [1.0]
    assert prom.finite('gpusched_predicted_cold_start_seconds_count{workload="inference"}') == [2.0]
    assert prom.finite('sum(gpusched_filter_rejections_total{plugin="gpu-fit"})')[0] >= 4
    assert prom.finite("gpusched_cluster_stale_reports") == [1.0]
    assert prom.finite("gpusched_cluster_gpu_nodes_without_fresh_report") == [1.0]  # l4-0, 600 s old
    (ratio,) = prom.finite("gpusched_cluster_gpu_fragmentation_ratio")
    assert 0.0 <= ratio <= 1.0


def test_every_panel_the_extender_feeds_returns_data(scraped: Scraped) -> None:
    checked, empty = [], []
    for board, title, expr in dashboard_queries():
        names = metric_names(expr)
        if any(n.startswith(("gpusched_agent_", "gpusched_inference_")) for n in names) or names & LIVE_ONLY:
            continue
        checked.append((board, title))
        if not scraped.prometheus.finite(grafana_expr(expr)):
            empty.append(f"{board}: {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    boards = {board for board, _ in checked}
    assert boards == {
        "gpusched-cluster.json",
        "gpusched-scheduler.json",
        "gpusched-gangs.json",
        "gpusched-cold-starts.json",
    }
    assert len(checked) >= 25
