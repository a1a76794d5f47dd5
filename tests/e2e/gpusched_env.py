"""The gpusched extender as a real process against the real control plane, and helpers to build
GPU nodes with reports and to read back where kube-scheduler put pods."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import k8s
from localcluster.cluster import LocalCluster, free_port
from scheduler.core.scenario import pod_object
from tests.builders import report_object

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "manifests" / "crds"
REPORTS = "/apis/gpusched.io/v1alpha1/gpunodereports"
# Fast retries so pods that failed while the extender was away come back within seconds.
FAST_BACKOFF = {"podInitialBackoffSeconds": 1, "podMaxBackoffSeconds": 2}


class Extender:
    """`gpusched-extender --kubeconfig` in its own process; restartable."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.args = list(args)
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "gpusched-config.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config or {})))
        self.log_path = workdir / f"extender-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scheduler.extender.cli",
                "--kubeconfig",
                str(self.cluster.kubeconfig_path),
                "--config",
                str(self.config_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"extender exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"extender not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed process goes: no shutdown hook runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as resp:
            data: bytes = resp.read()
            return data


class Env:
    """One test's view: the cluster, the extender, and shorthand for what tests do most."""

    def __init__(self, cluster: LocalCluster, extender: Extender) -> None:
        self.cluster = cluster
        self.extender = extender
        self.api = cluster.api_client()

    def node(
        self,
        name: str,
        gpus: int,
        labels: Mapping[str, str] | None = None,
        images: list[dict[str, Any]] | None = None,
        **report: Any,
    ) -> None:
        """A Ready GPU node and, unless report=None, its GPUNodeReport."""
        self.cluster.create_gpu_node(name, gpus, labels, images=images)
        if report.get("report", True) is not None:
            report.pop("report", None)
            self.report(name, gpus, **report)

    def report(self, name: str, gpus: int, **kwargs: Any) -> None:
        self.apply_report(report_object(name, gpus=gpus, **kwargs))

    def apply_report(self, body: dict[str, Any]) -> None:
        """Write a GPUNodeReport as the agent does (server-side apply), whatever it says."""
        k8s.request(
            self.api,
            "PATCH",
            f"{REPORTS}/{body['metadata']['name']}",
            body,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": "e2e", "force": "true"},
        )

    def pod(self, name: str, gpus: int = 1, **entry: Any) -> dict[str, Any]:
        obj = pod_object({"name": name, "gpus": gpus, **entry})
        if "node" not in entry:
            obj["spec"].pop("nodeName", None)
        created: dict[str, Any] = k8s.request(self.api, "POST", "/api/v1/namespaces/default/pods", obj)
        return created

    def get_pod(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = k8s.request(self.api, "GET", f"/api/v1/namespaces/default/pods/{name}")
        return pod

    def wait_bound(self, name: str, timeout: float = 60.0) -> str:
        return k8s.wait_for_pod_node(self.api, "default", name, timeout=timeout)

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = k8s.request(self.api, "GET", "/api/v1/namespaces/default/pods")["items"]
        return items

    def events_for(self, name: str) -> list[str]:
        query = {"fieldSelector": f"involvedObject.name={name}"}
        items = k8s.request(self.api, "GET", "/api/v1/namespaces/default/events", query=query)["items"]
        return [f"{e.get('reason')}: {e.get('message')}" for e in items]

    def wait_for(self, check: Any, what: str, timeout: float = 60.0) -> Any:
        """Poll until `check` returns something truthy (an empty list keeps waiting)."""
        return k8s.wait_until(lambda: check() or None, timeout=timeout, what=what, interval=0.3)


@pytest.fixture
def gpusched(control_plane: LocalCluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    """kube-scheduler wired to a freshly started gpusched extender; everything is removed after.

    Parametrise the gpusched config with `@pytest.mark.gpusched_config({...})`.
    """
    marker = request.node.get_closest_marker("gpusched_config")
    control_plane.apply_crds(CRDS)
    extender = Extender(control_plane, tmp_path, marker.args[0] if marker else None)
    extender.start()
    env = Env(control_plane, extender)
    try:
        control_plane.start_scheduler(extender.url, extender_config={}, scheduler_config=FAST_BACKOFF)
        yield env
    finally:
        control_plane.stop_scheduler()
        extender.stop()
        k8s.reset(env.api)
        k8s.request(env.api, "DELETE", REPORTS)
        env.api.close()
