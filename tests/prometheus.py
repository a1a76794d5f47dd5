"""A real Prometheus (Debian's `prometheus` package) for tests, configured from manifests/prometheus/.

Debian builds Prometheus without Kubernetes service discovery, so the manifest's scrape job is run
with its `kubernetes_sd_configs` swapped for a file of target groups that carry the labels
Kubernetes discovery would give each pod (`__meta_kubernetes_pod_annotation_*`, `..._label_*`,
the pod's IP and container ports). Everything else, relabelling and rule files included, is the
manifest's own, so the same relabelling turns a pod into the `gpusched-extender` or
`gpusched-agent` job here as in a cluster.

Processes that stand in for pods listen on their own loopback address (127.x.y.z) and on the port
their pod template declares, as each pod would on its own IP.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
PROMETHEUS_DIR = MANIFESTS / "prometheus"
DASHBOARDS_DIR = MANIFESTS / "dashboards"
# What Grafana would put in for the dashboards' variables.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$node": ".*"}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's prometheus package (make prometheus)")
    return path


def free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def loopback_address() -> str:
    """An address in 127.0.0.0/8 other than 127.0.0.1, so that manifest ports are free on it."""
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass(frozen=True)
class StandIn:
    """A process standing in for one pod of `workload` (a Deployment or DaemonSet), at `ip`."""

    workload: Mapping[str, Any]
    pod_name: str
    ip: str
    node: str = ""

    @property
    def namespace(self) -> str:
        return str(self.workload["metadata"].get("namespace") or "default")

    def target_groups(self) -> list[dict[str, Any]]:
        """One target group per container port, labelled as Kubernetes pod discovery labels them."""
        template = self.workload["spec"]["template"]
        meta = template.get("metadata") or {}
        labels = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.pod_name,
            "__meta_kubernetes_pod_ip": self.ip,
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_ready": "true",
            "__meta_kubernetes_pod_node_name": self.node,
            "__meta_kubernetes_pod_controller_kind": str(self.workload["kind"]),
            "__meta_kubernetes_pod_controller_name": str(self.workload["metadata"]["name"]),
        }
        for key, value in (meta.get("labels") or {}).items():
            labels[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = str(value)
            labels[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
        for key, value in (meta.get("annotations") or {}).items():
            labels[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = str(value)
            labels[f"__meta_kubernetes_pod_annotationpresent_{_sanitize(key)}"] = "true"
        groups = []
        for container in template["spec"]["containers"]:
            for port in container.get("ports") or []:
                groups.append(
                    {
                        "targets": [f"{self.ip}:{port['containerPort']}"],
                        "labels": {
                            **labels,
                            "__meta_kubernetes_pod_container_name": container["name"],
                            "__meta_kubernetes_pod_container_port_name": str(port.get("name", "")),
                            "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                            "__meta_kubernetes_pod_container_port_protocol": str(port.get("protocol", "TCP")),
                        },
                    }
                )
        return groups


def manifest_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return config


def scrape_config_for(
    workdir: Path, stand_ins: Iterable[StandIn], interval: str = "1s", token: str = "no-token"
) -> dict[str, Any]:
    """The manifest's prometheus.yml with pod discovery served from a file and a short interval.

    A job's ServiceAccount token file (``authorization.credentials_file``) becomes a file holding
    `token`, as the kubelet would mount Prometheus's own.
    """
    config = copy.deepcopy(manifest_config())
    token_file = workdir / "serviceaccount-token"
    token_file.write_text(token)
    config["global"] = {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config.get("rule_files") or []]
    stand_ins = list(stand_ins)
    for job in config["scrape_configs"]:
        if "credentials_file" in job.get("authorization", {}):
            job["authorization"]["credentials_file"] = str(token_file)
        sd_configs = job.pop("kubernetes_sd_configs")
        groups = []
        for sd in sd_configs:
            if sd.get("role") != "pod":
                raise ValueError(f"job {job['job_name']}: only role pod is stood in for, not {sd.get('role')}")
            names = set((sd.get("namespaces") or {}).get("names") or [])
            groups += [g for s in stand_ins if not names or s.namespace in names for g in s.target_groups()]
        sd_file = workdir / f"sd-{job['job_name']}.json"
        sd_file.write_text(json.dumps(groups, indent=1))
        job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
    return config


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) for every target of every panel of every dashboard."""
    out = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets") or []:
                out.append((path.name, str(panel["title"]), str(target["expr"])))
    return out


def metric_names(expr: str) -> set[str]:
    """The gpusched metric families an expression reads (histogram and counter suffixes removed)."""
    names = set(re.findall(r"\bgpusched_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in names}


class Prometheus:
    def __init__(self, workdir: Path, config: Mapping[str, Any], host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.host = host
        self.port = free_port(host)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait(lambda: self._ready(), timeout, "Prometheus ready")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def finite(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(expr) if math.isfinite(float(s["value"][1]))]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def scrapes(self) -> int:
        """Scrapes stored so far of the least scraped target (every scrape stores a sample of `up`)."""
        counts = self.finite("min(count_over_time(up[1h]))")
        return int(counts[0]) if counts else 0

    def wait_scrapes(self, more: int, timeout: float = 60.0) -> None:
        """Wait until every target has been scraped `more` more times than when called.

        Scrapes of a target never overlap, so with `more` >= 2 at least `more` - 1 of them began
        after the call: whatever the targets did before it is stored, with that many samples after.
        """
        done = self.scrapes()
        self.wait(lambda: self.scrapes() >= done + more, timeout, f"{more} more scrapes of every target")

    def wait_up(self, jobs: Mapping[str, int], timeout: float = 60.0) -> None:
        """Wait until each job has (at least) the given number of targets, all up."""

        def up() -> bool:
            targets = self.targets()
            for job, count in jobs.items():
                mine = [t for t in targets if t["labels"].get("job") == job]
                if len(mine) < count or any(t["health"] != "up" for t in mine):
                    return False
            return True

        self.wait(up, timeout, f"targets up: {dict(jobs)} (targets: {self.log_path})")

    @staticmethod
    def wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
