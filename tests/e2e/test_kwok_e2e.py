"""Pods that run: KWOK's controller plays the kubelet of fake GPU nodes from a scenario file, and
kube-controller-manager runs Jobs and Deployments, on the real control plane with kube-scheduler
and the gpusched extender placing the pods.

Phases are read from watches (every change since a list, so a short-lived Running is never
missed) or waited for with deadlines; nothing asserts a time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import LocalCluster, k8s
from localcluster.kwok import load_scenario
from tests.e2e.gpusched_env import CRDS, FAST_BACKOFF, REPORTS, Extender

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "localcluster" / "scenarios" / "try-it.yaml"
TRAIN_GANG = REPO / "localcluster" / "examples" / "train-gang.yaml"
NAMESPACE = "kwok-e2e"
# Whole GPUs in the scenario: 4 nodes x 8 H100 + 2 x 4 L4; eval-0 holds one H100.
TOTAL_GPUS = 40
FREE_AT_START = 39
JOB_SECONDS = 3  # how long a Job's pod runs unless its annotation says otherwise
# Spelled out, so the test does not depend on gpusched's default topology tiers.
GPUSCHED_CONFIG = {
    "topologyTiers": [
        "topology.kubernetes.io/zone",
        "network.topology.nvidia.com/spine",
        "network.topology.nvidia.com/leaf",
        "kubernetes.io/hostname",
    ]
}


class Kwok:
    """The cluster, its API client and the extender, with shorthand for what the tests do."""

    def __init__(self, cluster: LocalCluster, extender: Extender) -> None:
        self.cluster = cluster
        self.extender = extender
        self.api = cluster.api_client()

    def get(self, path: str) -> Any:
        return k8s.request(self.api, "GET", path)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        query = {"labelSelector": selector}
        items: list[dict[str, Any]] = k8s.request(self.api, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query=query)[
            "items"
        ]
        return items

    def free_gpus_in_gpusched(self) -> float | None:
        """gpusched's own count of whole free GPUs (its /metrics), or None before its first snapshot."""
        for line in self.extender.get("/metrics").decode().splitlines():
            if line.startswith('gpusched_cluster_gpus{state="free"}'):
                return float(line.split()[-1])
        return None

    def report_free(self, node: str) -> int | None:
        value: int | None = self.get(f"{REPORTS}/{node}")["spec"].get("freeGpus")
        return value


def _phase_node(pod: dict[str, Any]) -> tuple[str, str]:
    return (pod.get("status") or {}).get("phase", ""), (pod.get("spec") or {}).get("nodeName") or ""


def watch_until(
    api: Any, selector: str, done: Any, *, after: str, timeout: float = 240.0
) -> dict[str, list[tuple[str, str]]]:
    """Every (phase, node) each pod matching ``selector`` passes through after resource version
    ``after``, until ``done(seen)`` holds; fails with what was seen if the watch ends first."""
    seen: dict[str, list[tuple[str, str]]] = {}
    query = {"labelSelector": selector, "resourceVersion": after}
    for event in k8s.watch(api, f"/api/v1/namespaces/{NAMESPACE}/pods", query=query, timeout=timeout):
        if event["type"] not in ("ADDED", "MODIFIED"):
            continue
        pod = event["object"]
        state = _phase_node(pod)
        history = seen.setdefault(pod["metadata"]["name"], [])
        if not history or history[-1] != state:
            history.append(state)
        if done(seen):
            return seen
    raise AssertionError(f"watch ended before the pods got there; seen: {seen}")


def reported_free(kwok: Kwok) -> int:
    """Free GPUs summed over the nodes' reports."""
    return sum(r["spec"].get("freeGpus", 0) for r in kwok.get(REPORTS)["items"])


def resource_version(api: Any, path: str) -> str:
    version: str = k8s.request(api, "GET", path, query={"limit": "1"})["metadata"]["resourceVersion"]
    return version


@pytest.fixture(scope="module")
def kwok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kwok]:
    """A cluster of its own: the try-it scenario's fake nodes, KWOK, the controller manager, the
    node-report stand-in, gpusched and kube-scheduler wired to it."""
    workdir = tmp_path_factory.mktemp("kwok-cluster")
    with LocalCluster(workdir, scheduler_name=["default-scheduler", "gpusched"]) as cluster:
        cluster.apply_crds(CRDS)
        cluster.start_kwok(job_seconds=JOB_SECONDS)
        cluster.create_scenario(load_scenario(SCENARIO))
        cluster.start_node_reports(SCENARIO, interval=1)
        cluster.create_namespace(NAMESPACE)
        extender = Extender(cluster, workdir, GPUSCHED_CONFIG)
        extender.start()
        env = Kwok(cluster, extender)
        try:
            cluster.start_scheduler(extender.url, extender_config={}, scheduler_config=FAST_BACKOFF)
            k8s.wait_until(
                lambda: env.free_gpus_in_gpusched() == FREE_AT_START,
                timeout=60,
                what="gpusched to see the scenario's GPUs",
            )
            yield env
        finally:
            extender.stop()
            env.api.close()


def test_scenario_nodes_are_ready_with_gpus_and_its_pod_runs(kwok: Kwok) -> None:
    nodes = {n["metadata"]["name"]: n for n in kwok.get("/api/v1/nodes")["items"]}
    assert sorted(nodes) == ["h100-r1-0", "h100-r1-1", "h100-r2-0", "h100-r2-1", "l4-0", "l4-1"]
    for name, node in nodes.items():
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", name  # set by KWOK: localcluster creates nodes without conditions
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == ("4" if name.startswith("l4") else "8")
        assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("kwok-")
    assert nodes["h100-r2-1"]["metadata"]["labels"]["network.topology.nvidia.com/leaf"] == "r2"

    pod = kwok.get("/api/v1/namespaces/default/pods/eval-0")
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"]
    assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert k8s.wait_until(lambda: kwok.report_free("h100-r1-0") == 7, timeout=30, what="report of h100-r1-0")
    assert kwok.report_free("l4-1") == 4


def test_training_gang_job_runs_whole_completes_and_frees_its_gpus(kwok: Kwok) -> None:
    job = yaml.safe_load(TRAIN_GANG.read_text())
    job["metadata"]["namespace"] = NAMESPACE
    job["spec"]["template"]["metadata"]["annotations"]["pod-complete.stage.kwok.x-k8s.io/delay"] = "5s"
    selector = "batch.kubernetes.io/job-name=train"
    after = resource_version(kwok.api, f"/api/v1/namespaces/{NAMESPACE}/pods")
    k8s.request(kwok.api, "POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", job)

    def both_succeeded(seen: dict[str, list[tuple[str, str]]]) -> bool:
        return len(seen) == 2 and all(history[-1][0] == "Succeeded" for history in seen.values())

    seen = watch_until(kwok.api, selector, both_succeeded, after=after)
    for name, history in seen.items():
        phases = [phase for phase, _ in history]
        assert "Running" in phases and phases.index("Running") < phases.index("Succeeded"), (name, history)
    nodes = {node for history in seen.values() for phase, node in history if phase == "Running"}
    # r1 has one whole node free (eval-0 holds a GPU of the other): the gang fits only in r2.
    assert nodes == {"h100-r2-0", "h100-r2-1"}, seen
    for pod in kwok.pods(selector):
        annotations = pod["metadata"]["annotations"]
        assert annotations["gpusched.io/rank"] == annotations["batch.kubernetes.io/job-completion-index"]
        assert annotations["gpusched.io/planned-node"] == pod["spec"]["nodeName"]

    def complete() -> bool:
        status = kwok.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/train").get("status") or {}
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions") or ())

    k8s.wait_until(complete, timeout=60, what="Job train to be Complete")
    assert kwok.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/train")["status"]["succeeded"] == 2
    k8s.wait_until(
        lambda: kwok.free_gpus_in_gpusched() == FREE_AT_START, timeout=60, what="gpusched to see the GPUs free"
    )
    k8s.wait_until(
        lambda: kwok.report_free("h100-r2-0") == 8 and kwok.report_free("h100-r2-1") == 8,
        timeout=30,
        what="the reports to show the GPUs free",
    )


def test_job_pod_without_a_delay_completes_after_the_cluster_default(kwok: Kwok) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "eval", "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "eval", "image": "ghcr.io/example/eval:1"}],
                }
            },
        },
    }
    after = resource_version(kwok.api, f"/api/v1/namespaces/{NAMESPACE}/pods")
    k8s.request(kwok.api, "POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", job)
    seen = watch_until(
        kwok.api,
        "batch.kubernetes.io/job-name=eval",
        lambda seen: len(seen) == 1 and next(iter(seen.values()))[-1][0] == "Succeeded",
        after=after,
    )
    (history,) = seen.values()
    assert [phase for phase, _ in history][-2:] == ["Running", "Succeeded"], history
    (pod,) = kwok.pods("batch.kubernetes.io/job-name=eval")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    # A pod no Job owns never completes: the scenario's eval-0 still runs.
    assert kwok.get("/api/v1/namespaces/default/pods/eval-0")["status"]["phase"] == "Running"


def test_inference_deployment_rolls_to_a_new_image(kwok: Kwok) -> None:
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "chat"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "chat"}, "annotations": {"gpusched.io/workload": "inference"}},
                "spec": {
                    "schedulerName": "gpusched",
                    "containers": [
                        {
                            "name": "server",
                            "image": "ghcr.io/example/server:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    k8s.request(kwok.api, "POST", path, deployment)

    def rolled_out(image: str) -> bool:
        dep = kwok.get(f"{path}/chat")
        status = dep.get("status") or {}
        pods = kwok.pods("app=chat")
        return (
            status.get("observedGeneration") == dep["metadata"]["generation"]
            and status.get("updatedReplicas") == 2
            and status.get("availableReplicas") == 2
            and status.get("replicas") == 2
            and len(pods) == 2
            and all(p["status"].get("phase") == "Running" for p in pods)
            and all(p["spec"]["containers"][0]["image"] == image for p in pods)
        )

    k8s.wait_until(lambda: rolled_out("ghcr.io/example/server:1"), timeout=120, what="2 replicas Running")
    first = {p["metadata"]["name"] for p in kwok.pods("app=chat")}
    k8s.wait_until(lambda: kwok.free_gpus_in_gpusched() == FREE_AT_START - 2, timeout=60, what="2 GPUs held")
    k8s.wait_until(lambda: reported_free(kwok) == FREE_AT_START - 2, timeout=30, what="reports: 2 more GPUs held")

    update = copy.deepcopy(deployment)
    update["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/example/server:2"
    k8s.request(
        kwok.api,
        "PATCH",
        f"{path}/chat",
        update,
        query={"fieldManager": "e2e", "force": "true"},
        content_type=k8s.APPLY_PATCH,
    )
    k8s.wait_until(lambda: rolled_out("ghcr.io/example/server:2"), timeout=120, what="the rollout to finish")
    second = {p["metadata"]["name"] for p in kwok.pods("app=chat")}
    assert not first & second  # every old replica was deleted (KWOK's pod-delete stage) and replaced
    for pod in kwok.pods("app=chat"):
        assert pod["spec"]["nodeName"] and pod["metadata"]["annotations"].get("gpusched.io/gpu-ids")
    # The old replicas' GPUs are free again in gpusched's view: two held, not four.
    k8s.wait_until(lambda: kwok.free_gpus_in_gpusched() == FREE_AT_START - 2, timeout=60, what="2 GPUs held")
    k8s.request(kwok.api, "DELETE", f"{path}/chat")
