"""Gangs from every source gpusched reads, against the real API server and kube-scheduler: a
scheduler-plugins PodGroup (its CRD as scheduler-plugins ships it), Kubernetes' own Workload and
PodGroup (scheduling.k8s.io/v1beta1, the GenericWorkload gate localcluster's API server enables),
and LeaderWorkerSet groups (pods labelled as LWS labels them; no LWS controller needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster, k8s
from scheduler.core.scenario import pod_object
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

LEAF = "network.topology.nvidia.com/leaf"
NVLINK = "network.topology.nvidia.com/accelerator"
PLUGINS_MODULE = "sigs.k8s.io/scheduler-plugins@v0.34.7"
PLUGINS_GROUPS = "/apis/scheduling.x-k8s.io/v1alpha1/namespaces/default/podgroups"
K8S_SCHEDULING = "/apis/scheduling.k8s.io/v1beta1/namespaces/default"
LWS = "leaderworkerset.sigs.k8s.io/"


@pytest.fixture(scope="module")
def plugins_crd(control_plane: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """scheduler-plugins' PodGroup CRD, as its release ships it (manifests/coscheduling/crd.yaml
    of the Go module, from the module proxy or Go's module cache). Applied before the extender
    starts, so the extender finds the API served."""
    workdir = tmp_path_factory.mktemp("scheduler-plugins")
    found = subprocess.run(
        ["go", "mod", "download", "-json", PLUGINS_MODULE], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    info = json.loads(found.stdout or "{}")
    assert found.returncode == 0 and "Dir" in info, f"go mod download {PLUGINS_MODULE}: {found.stderr or info}"
    crd = workdir / "crd.yaml"
    shutil.copy(Path(info["Dir"]) / "manifests" / "coscheduling" / "crd.yaml", crd)
    control_plane.apply_crds(crd)
    yield


def two_racks(env: Env) -> None:
    """Racks r0 and r1, each of two NVLink domains of two 8-GPU nodes."""
    for r in range(2):
        for d in range(2):
            for i in range(2):
                env.node(f"r{r}-d{d}-n{i}", 8, labels={LEAF: f"r{r}", NVLINK: f"r{r}-d{d}"})


def create_pod(
    env: Env, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None, **spec: Any
) -> None:
    obj = pod_object({"name": name, "gpus": 8, "labels": labels, "annotations": annotations or {}})
    obj["spec"].pop("nodeName", None)
    obj["spec"].update(spec)
    k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)


def node_label(env: Env, node: str, key: str) -> str:
    return str(k8s.request(env.api, "GET", f"/api/v1/nodes/{node}")["metadata"]["labels"][key])


def annotations(env: Env, name: str) -> dict[str, str]:
    return dict(env.get_pod(name)["metadata"].get("annotations") or {})


def waiting_because(env: Env, name: str, fragment: str) -> bool:
    return any(e.startswith("FailedScheduling") and fragment in e for e in env.events_for(name))


def test_a_scheduler_plugins_pod_group_gives_the_size_even_when_it_comes_after_its_pods(
    plugins_crd: None, gpusched: Env
) -> None:
    two_racks(gpusched)
    # Rack r0's domain d0 keeps one whole node: the gang of two fits whole in any other domain.
    gpusched.pod("squatter", 1, node="r0-d0-n0", gpuIds=[0])
    names = ["train-0", "train-1"]
    try:
        for rank, name in enumerate(names):
            create_pod(
                gpusched,
                name,
                {"scheduling.x-k8s.io/pod-group": "train", "batch.kubernetes.io/job-completion-index": str(rank)},
            )
        # No min-member annotation and no PodGroup yet: the members wait, saying why.
        gpusched.wait_for(
            lambda: waiting_because(gpusched, "train-0", "no PodGroup (scheduling.x-k8s.io) 'train'"),
            "members waiting for their PodGroup",
            timeout=120,
        )
        assert not gpusched.get_pod("train-1")["spec"].get("nodeName")
        group = {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup",
            "metadata": {"name": "train"},
            "spec": {"minMember": 2},
        }
        k8s.request(gpusched.api, "POST", PLUGINS_GROUPS, group)
        nodes = [gpusched.wait_bound(name, timeout=120) for name in names]
        in_domains = {node_label(gpusched, n, NVLINK) for n in nodes}
        assert len(set(nodes)) == 2 and len(in_domains) == 1 and in_domains != {"r0-d0"}, nodes
        for rank, name in enumerate(names):
            assert annotations(gpusched, name)["gpusched.io/rank"] == str(rank)
    finally:
        k8s.request(gpusched.api, "DELETE", PLUGINS_GROUPS)


def test_a_kubernetes_workload_pod_group_is_placed_whole(gpusched: Env) -> None:
    two_racks(gpusched)
    for d in range(2):  # rack r0 holds no two whole nodes of one domain; r1 does
        gpusched.pod(f"squatter-{d}", 1, node=f"r0-d{d}-n0", gpuIds=[0])
    gang = {"gang": {"minCount": 2}}
    workload = {
        "apiVersion": "scheduling.k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {"name": "train"},
        "spec": {"podGroupTemplates": [{"name": "workers", "schedulingPolicy": gang}]},
    }
    # The PodGroup a workload controller creates from the template.
    group = {
        "apiVersion": "scheduling.k8s.io/v1beta1",
        "kind": "PodGroup",
        "metadata": {"name": "train-workers"},
        "spec": {"workloadRef": {"workloadName": "train", "templateName": "workers"}, "schedulingPolicy": gang},
    }
    try:
        k8s.request(gpusched.api, "POST", f"{K8S_SCHEDULING}/workloads", workload)
        k8s.request(gpusched.api, "POST", f"{K8S_SCHEDULING}/podgroups", group)
        names = ["train-0", "train-1"]
        for rank, name in enumerate(names):
            create_pod(
                gpusched,
                name,
                {"batch.kubernetes.io/job-completion-index": str(rank)},
                schedulingGroup={"podGroupName": "train-workers"},
            )
        # The API server kept the reference (it drops the field when the gate is off).
        assert gpusched.get_pod("train-0")["spec"]["schedulingGroup"] == {"podGroupName": "train-workers"}
        nodes = [gpusched.wait_bound(name, timeout=120) for name in names]
        in_domains = {node_label(gpusched, n, NVLINK) for n in nodes}
        assert len(set(nodes)) == 2 and len(in_domains) == 1 and in_domains <= {"r1-d0", "r1-d1"}, nodes
        plans = {annotations(gpusched, name)["gpusched.io/gang-plan"] for name in names}
        assert len(plans) == 1 and next(iter(plans)).startswith("scheduling.k8s.io/train-workers-")
    finally:
        k8s.request(gpusched.api, "DELETE", f"{K8S_SCHEDULING}/podgroups")
        k8s.request(gpusched.api, "DELETE", f"{K8S_SCHEDULING}/workloads")


def lws_pod(env: Env, lws: str, group: int, worker: int, size: int) -> str:
    """A pod as LeaderWorkerSet makes it: the leader `<lws>-<group>`, workers `<lws>-<group>-<worker>`."""
    name = f"{lws}-{group}" if worker == 0 else f"{lws}-{group}-{worker}"
    labels = {LWS + "name": lws, LWS + "group-index": str(group), LWS + "worker-index": str(worker)}
    create_pod(env, name, labels, {LWS + "size": str(size)})
    return name


def test_each_leader_worker_set_group_is_a_gang_in_one_nvlink_domain(gpusched: Env) -> None:
    two_racks(gpusched)
    gpusched.pod("squatter", 1, node="r0-d0-n0", gpuIds=[0])  # d0 of r0 holds one whole node
    groups = {g: [lws_pod(gpusched, "vllm", g, w, size=2) for w in range(2)] for g in range(2)}
    domains = {}
    for g, names in groups.items():
        nodes = [gpusched.wait_bound(name, timeout=120) for name in names]
        assert len(set(nodes)) == 2
        in_domains = {node_label(gpusched, n, NVLINK) for n in nodes}
        assert len(in_domains) == 1, f"group {g} spans {in_domains}"
        domains[g] = in_domains.pop()
        for worker, name in enumerate(names):  # rank = worker-index: the leader is rank 0
            assert annotations(gpusched, name)["gpusched.io/rank"] == str(worker)
    # Two groups, two domains, neither the one a squatter broke.
    assert len(set(domains.values())) == 2 and "r0-d0" not in domains.values()


def test_a_leader_worker_set_group_waits_for_its_whole_size(gpusched: Env) -> None:
    two_racks(gpusched)
    leader = lws_pod(gpusched, "big", 0, 0, size=3)
    gpusched.wait_for(
        lambda: waiting_because(gpusched, leader, "gang lws/big/0: waiting for members (1 of 3 exist)"),
        "the leader waiting for its workers",
        timeout=120,
    )
    workers = [lws_pod(gpusched, "big", 0, w, size=3) for w in (1, 2)]
    nodes = [gpusched.wait_bound(name, timeout=120) for name in (leader, *workers)]
    assert len({node_label(gpusched, n, LEAF) for n in nodes}) == 1  # 3 nodes: no domain holds them
