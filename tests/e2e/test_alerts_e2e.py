"""The alerts about lost signals, against what a real run produces.

gpusched is installed on the real control plane (install_env.py) and a real Prometheus, configured
from manifests/prometheus/ and authenticated with the token of rbac.yaml's ServiceAccount, scrapes
the extender, the agents and the second scheduler (kube-scheduler's secure port). Then three
things go wrong, as they do on a fleet:

- node gpu-c joins with an agent whose token is bound to another node, so the admission policy
  refuses its report and its Lease: a GPU node without a fresh report;
- the agent of gpu-b stops: an agent that is down;
- kube-scheduler stops: the second scheduler is down.

The real Prometheus must find those alerts pending. The series their expressions read are then
taken from it as the run produced them (names, every label, values) and written into a promtool
unit test, held at their last value for ten minutes, in which `promtool test rules` must see
exactly these alerts fire. The checked-in unit tests (gpusched-alerts-test.yaml) must use the
metric names and label names that the run produced.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import k8s
from tests import install
from tests.e2e.install_env import Installed, installed, kubeconfig, service_account_token, spawn, wait_http
from tests.prometheus import PROMETHEUS_DIR, Prometheus, StandIn, loopback_address, promtool, scrape_config_for

pytestmark = pytest.mark.e2e

__all__ = ["installed"]

ALERTS = ("GpuschedSchedulerDown", "GpuschedGpuNodeWithoutFreshReport", "GpuschedAgentDown")
RULES = [r for g in yaml.safe_load((PROMETHEUS_DIR / "gpusched-alerts.yaml").read_text())["groups"] for r in g["rules"]]
EXPRESSIONS = {rule["alert"]: rule["expr"] for rule in RULES}
UNREPORTED_NODE = "gpu-c"


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside label matchers and grouping
    clauses that call nothing and are no operator."""
    bare = re.sub(r"\{[^}]*\}|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    words = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)
    return {w for w in words if w not in {"and", "or", "unless", "bool"}}


@dataclass
class Run:
    prometheus: Prometheus
    workdir: Path
    pending: list[dict[str, Any]]
    # metric name -> [(labels without __name__, last value)] at the end of the run
    series: dict[str, list[tuple[dict[str, str], float]]]
    label_names: dict[str, set[str]]  # every metric the run produced -> label names seen on it


def _agent_refused(env: Installed, node: str, bound_to: dict[str, Any]) -> StandIn:
    """An agent for `node` whose token is bound to another Node: every write is refused."""
    daemonset = install.find(env.objects, "DaemonSet", "gpusched-agent")
    ip = loopback_address()
    token = service_account_token(env.api, "gpusched-agent", bound_to)
    config = kubeconfig(env.workdir / f"agent-{node}.kubeconfig", env.cluster, "gpusched-agent", token)
    cmd = install.local_command(
        env.objects,
        daemonset,
        env.workdir / f"agent-{node}",
        field_refs={"spec.nodeName": node, "metadata.namespace": daemonset["metadata"]["namespace"]},
        flags={"--metrics-address": ip},
        extra=[f"--kubeconfig={config}", "--fake-nvml=l4x4"],
    )
    port = next(a.split("=")[1] for a in cmd.argv if a.startswith("--metrics-port="))
    wait_http(spawn(env, f"agent-{node}", cmd), f"http://{ip}:{port}/metrics")
    return StandIn(daemonset, f"gpusched-agent-{node}", ip, node)


def _scheduler_stand_in(env: Installed) -> StandIn:
    """kube-scheduler as started by localcluster: on 127.0.0.1, its secure port where the pod declares 10259."""
    deployment = copy.deepcopy(install.find(env.objects, "Deployment", "gpusched-scheduler"))
    (port,) = install.container(deployment)["ports"]
    port["containerPort"] = env.cluster.scheduler_port
    return StandIn(deployment, "gpusched-scheduler-0", "127.0.0.1")


def _pending(prom: Prometheus) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = prom.api("alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] in ALERTS]


@pytest.fixture(scope="module")
def run(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    env = installed
    workdir = tmp_path_factory.mktemp("alerts-e2e")
    rbac = install.Applier(env.api)
    rbac_objects = list(yaml.safe_load_all((PROMETHEUS_DIR / "rbac.yaml").read_text()))
    rbac.apply(rbac_objects)
    token = service_account_token(env.api, "gpusched-prometheus")
    other = k8s.request(env.api, "GET", "/api/v1/nodes/gpu-b")
    env.cluster.create_gpu_node(UNREPORTED_NODE, 4, {"nvidia.com/gpu.present": "true"})
    stand_ins = [*env.stand_ins, _agent_refused(env, UNREPORTED_NODE, other), _scheduler_stand_in(env)]
    prom = Prometheus(workdir, scrape_config_for(workdir, stand_ins, token=token))
    try:
        prom.start()
        prom.wait_up({"gpusched-extender": 1, "gpusched-agent": 3, "gpusched-scheduler": 1}, timeout=120)
        prom.wait(
            lambda: prom.finite('count({job="gpusched-scheduler", __name__=~"scheduler_.+"})'),
            60,
            "kube-scheduler's own series, answered to the ServiceAccount token",
        )
        prom.wait(
            lambda: prom.finite("gpusched_cluster_gpu_nodes_without_fresh_report") == [1.0],
            120,
            f"the extender to count {UNREPORTED_NODE} as a GPU node without a fresh report",
        )
        prom.wait(
            lambda: prom.finite(f'gpusched_agent_report_writes_total{{node="{UNREPORTED_NODE}", result="error"}} > 0'),
            120,
            f"the refused writes of {UNREPORTED_NODE}'s agent to be counted",
        )
        env.processes["agent-gpu-b"].stop()
        env.cluster.stop_scheduler()
        prom.wait(lambda: len(_pending(prom)) == len(ALERTS), 180, f"{ALERTS} to be pending")
        prom.wait_scrapes(2)
        end = time.time()
        series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name in set().union(*(series_names(EXPRESSIONS[a]) for a in ALERTS)):
            for sample in prom.query(f"last_over_time({name}[5s])"):
                labels = {k: v for k, v in sample["metric"].items() if k != "__name__"}
                series.setdefault(name, []).append((labels, float(sample["value"][1])))
        label_names: dict[str, set[str]] = {}
        for labels in prom.api("series", **{"match[]": '{__name__=~".+"}', "start": str(end - 3600), "end": str(end)}):
            label_names.setdefault(labels["__name__"], set()).update(k for k in labels if k != "__name__")
        yield Run(prom, workdir, _pending(prom), series, label_names)
    finally:
        prom.stop()
        rbac.delete(rbac_objects)
        k8s.request(env.api, "DELETE", f"/api/v1/nodes/{UNREPORTED_NODE}")


def test_the_real_prometheus_finds_each_alert_pending(run: Run) -> None:
    by_name = {a["labels"]["alertname"]: a for a in run.pending}
    assert sorted(by_name) == sorted(ALERTS)
    assert by_name["GpuschedAgentDown"]["labels"]["pod"] == "gpusched-agent-gpu-b"
    # gpu-c, and gpu-b as well once its last renewal is older than reportTTLSeconds.
    assert float(by_name["GpuschedGpuNodeWithoutFreshReport"]["value"]) >= 1.0
    assert all(a["state"] == "pending" for a in run.pending)  # `for` has not passed yet


def test_an_agent_that_never_wrote_shows_a_growing_age(run: Run) -> None:
    """The agent of gpu-c has had every write refused since it started: its ages exist all the same
    and only grow, which is what GpuschedAgentReportStale reads."""
    prom, node = run.prometheus, f'node="{UNREPORTED_NODE}"'
    assert prom.finite(f'gpusched_agent_report_writes_total{{{node}, result="ok"}}') == [0.0]
    assert prom.finite(f'gpusched_agent_report_writes_total{{{node}, result="error"}}')[0] >= 1
    for age in ("gpusched_agent_lease_age_seconds", "gpusched_agent_report_age_seconds"):
        grown = f"max_over_time({age}{{{node}}}[1h]) - min_over_time({age}{{{node}}}[1h]) >= 5"
        prom.wait(partial(prom.finite, grown), 120, f"{age} of {UNREPORTED_NODE} to grow by 5 s")
        assert prom.finite(f"resets({age}{{{node}}}[1h])") == [0.0], f"{age} fell: something was accepted"


def _render(template: str, labels: dict[str, str], value: float) -> str:
    """The annotation templates the alerts use: $labels.NAME and $value."""

    def one(match: re.Match[str]) -> str:
        expr = match[1].strip()
        if expr == "$value":
            return format(value, "g")
        if expr.startswith("$labels."):
            return labels.get(expr.removeprefix("$labels."), "")
        raise ValueError(f"template {expr!r} is not rendered here")

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def test_promtool_fires_the_alerts_on_the_series_the_run_produced(run: Run) -> None:
    """Each captured series, labels as scraped, holds its last value for ten minutes (one sample a
    minute); at 9 minutes every `for` (at most 5m) has passed."""
    input_series = []
    for name, samples in sorted(run.series.items()):
        for labels, value in samples:
            selector = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            input_series.append({"series": f"{name}{{{selector}}}", "values": f"{format(value, 'g')}x10"})
    rules = {rule["alert"]: rule for rule in RULES}
    # The alerts' values as promtool computes them from the held series.
    unreported = run.series["gpusched_cluster_gpu_nodes_without_fresh_report"]
    values = {
        "GpuschedSchedulerDown": 0.0,
        "GpuschedAgentDown": 0.0,
        "GpuschedGpuNodeWithoutFreshReport": max(value for _, value in unreported),
    }
    cases = []
    for alert in run.pending:
        name = alert["labels"]["alertname"]
        labels = {k: v for k, v in alert["labels"].items() if k != "alertname"}
        annotations = {k: _render(v, labels, values[name]) for k, v in rules[name]["annotations"].items()}
        cases.append({"name": name, "labels": labels, "annotations": annotations})
    tests = [
        {
            "name": "the end of the e2e run, held",
            "interval": "1m",
            "input_series": input_series,
            "alert_rule_test": [
                {
                    "eval_time": "9m",
                    "alertname": case["name"],
                    "exp_alerts": [{"exp_labels": case["labels"], "exp_annotations": case["annotations"]}],
                }
                for case in cases
            ],
        }
    ]
    path = run.workdir / "captured-test.yaml"
    path.write_text(
        yaml.safe_dump(
            {"rule_files": [str(PROMETHEUS_DIR / "gpusched-alerts.yaml")], "evaluation_interval": "1m", "tests": tests}
        )
    )
    # The run must have given each expression something to read, with the labels scraping adds.
    up = {labels["job"]: labels for labels, _ in run.series["up"]}
    assert {"gpusched-scheduler", "gpusched-agent"} <= set(up)
    assert {"instance", "namespace", "pod"} <= set(up["gpusched-agent"])
    result = promtool("test", "rules", str(path), cwd=run.workdir)
    assert result.returncode == 0, result.stdout + result.stderr + path.read_text()


def test_the_alert_unit_tests_use_names_and_labels_the_run_produced(run: Run) -> None:
    """Every input series of the checked-in unit tests of these alerts names a metric the run
    produced, with label names it carried."""
    tests = yaml.safe_load((PROMETHEUS_DIR / "gpusched-alerts-test.yaml").read_text())["tests"]
    checked = 0
    for test in tests:
        if not {case["alertname"] for case in test["alert_rule_test"]} & {*ALERTS, "GpuschedAgentReportStale"}:
            continue
        for entry in test["input_series"]:
            name, _, selector = entry["series"].partition("{")
            names = set(re.findall(r"(\w+)\s*=", selector))
            assert name in run.label_names, f"{name} was not produced by the run"
            assert names <= run.label_names[name], f"{entry['series']}: the run's labels are {run.label_names[name]}"
            checked += 1
    assert checked >= 5
