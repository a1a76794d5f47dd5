"""The local control plane itself: real kube-scheduler placing GPU pods on API-only nodes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from localcluster import K8S_VERSION, LocalCluster, k8s
from localcluster.cluster import free_port
from localcluster.pytest_plugin import StartScheduler

pytestmark = pytest.mark.e2e

NAMESPACE = "localcluster-e2e"
GPU = "nvidia.com/gpu"


def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {GPU: str(gpus)}},
                }
            ]
        },
    }


def scheduling_failures(api: Any, pod: str) -> list[str] | None:
    events = k8s.request(
        api,
        "GET",
        f"/api/v1/namespaces/{NAMESPACE}/events",
        query={"fieldSelector": f"involvedObject.name={pod},reason=FailedScheduling"},
    )["items"]
    return [event["message"] for event in events] or None


def test_apiserver_reports_pinned_version(control_plane: LocalCluster) -> None:
    with control_plane.api_client() as api:
        version = k8s.request(api, "GET", "/version")
    assert version["gitVersion"] == K8S_VERSION


def test_scheduler_binds_gpu_pod_and_rejects_oversized_one(
    control_plane: LocalCluster, kube_scheduler: StartScheduler
) -> None:
    control_plane.create_gpu_node("gpu-a", gpus=4, labels={"network.topology.nvidia.com/leaf": "r1"})
    control_plane.create_gpu_node("gpu-b", gpus=8, images=[{"names": ["example/llm:1"], "sizeBytes": 10**9}])
    control_plane.create_namespace(NAMESPACE)
    kube_scheduler()

    with control_plane.api_client() as api:
        k8s.request(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", gpu_pod("one-gpu", 1))
        k8s.request(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", gpu_pod("nine-gpus", 9))

        assert k8s.wait_for_pod_node(api, NAMESPACE, "one-gpu") in {"gpu-a", "gpu-b"}

        messages = k8s.wait_until(
            lambda: scheduling_failures(api, "nine-gpus"), timeout=30, what="FailedScheduling for nine-gpus"
        )
        assert any(f"Insufficient {GPU}" in message for message in messages), messages
        pod = k8s.request(api, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods/nine-gpus")
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")


def test_not_ready_node_gets_no_pods(control_plane: LocalCluster, kube_scheduler: StartScheduler) -> None:
    control_plane.create_gpu_node("gpu-down", gpus=8)
    control_plane.create_gpu_node("gpu-up", gpus=8)
    control_plane.set_node_ready("gpu-down", False)
    control_plane.create_namespace(NAMESPACE)
    kube_scheduler()

    with control_plane.api_client() as api:
        for i in range(3):
            k8s.request(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", gpu_pod(f"p{i}", 1))
        assert {k8s.wait_for_pod_node(api, NAMESPACE, f"p{i}") for i in range(3)} == {"gpu-up"}


def test_extender_config_is_accepted_and_consulted(control_plane: LocalCluster, kube_scheduler: StartScheduler) -> None:
    # Nothing listens at this URL: kube-scheduler must still accept the configuration, and a
    # GPU pod (a managed resource) must fail on the unreachable extender, not be placed.
    url = f"http://127.0.0.1:{free_port()}/gpusched"
    control_plane.create_gpu_node("gpu-x", gpus=8)
    control_plane.create_namespace(NAMESPACE)
    kube_scheduler(url, extender_config={"weight": 5})
    control_plane.restart_scheduler()
    config = (control_plane.workdir / "kube-scheduler.yaml").read_text()
    assert url in config and "weight: 5" in config

    with control_plane.api_client() as api:
        k8s.request(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", gpu_pod("via-extender", 1))
        messages = k8s.wait_until(
            lambda: scheduling_failures(api, "via-extender"),
            timeout=30,
            what="FailedScheduling for via-extender",
        )
    assert any(url in message for message in messages), messages


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.gpusched.io
spec:
  group: example.gpusched.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer}
"""


def test_apply_crds_then_custom_resource(control_plane: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "widgets.yaml").write_text(WIDGET_CRD)
    assert control_plane.apply_crds(tmp_path) == ["widgets.example.gpusched.io"]
    control_plane.create_namespace(NAMESPACE)
    widget = {
        "apiVersion": "example.gpusched.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": NAMESPACE},
        "spec": {"size": 3},
    }
    control_plane.apply_manifest(widget)
    widget["spec"] = {"size": 4}
    (applied,) = control_plane.apply_manifest(widget)
    assert applied["spec"]["size"] == 4


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="test failure"), LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_scheduler()
        pids = [proc.pid for proc in cluster.processes.values()]
        assert len(pids) == 3
        raise RuntimeError("test failure")

    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert cluster.processes == {}
