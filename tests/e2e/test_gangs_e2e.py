"""Gangs through the real kube-scheduler: whole or not at all, in one leaf, never deadlocked,
Unschedulable when they cannot fit, preempting only where their plan needs room."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from localcluster import k8s
from scheduler.core.scenario import pod_object
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

LEAF = "network.topology.nvidia.com/leaf"
TIERS = {"topologyTiers": [LEAF, "kubernetes.io/hostname"]}


def two_racks(env: Env, per_rack: int = 4) -> None:
    for r in range(2):
        for i in range(per_rack):
            env.node(f"r{r}-n{i}", 8, labels={LEAF: f"r{r}"})


def gang(
    env: Env,
    group: str,
    size: int,
    gpus: int = 8,
    create: int | None = None,
    spec: dict[str, Any] | None = None,
    **entry: Any,
) -> list[str]:
    """Members of a gang as a Job would make them; `spec` adds Pod spec fields (nodeSelector, ...)."""
    names = []
    for rank in range(size if create is None else create):
        name = f"{group}-{rank}"
        labels = {"scheduling.x-k8s.io/pod-group": group, "batch.kubernetes.io/job-completion-index": str(rank)}
        obj = pod_object(
            {
                "name": name,
                "gpus": gpus,
                "annotations": {"gpusched.io/min-member": str(size)},
                "labels": labels,
                **entry,
            }
        )
        obj["spec"].pop("nodeName", None)
        obj["spec"].update(spec or {})
        k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)
        names.append(name)
    return names


def failed_scheduling(env: Env, name: str) -> list[str]:
    return [e for e in env.events_for(name) if e.startswith("FailedScheduling")]


def scheduled_condition(env: Env, name: str) -> dict[str, Any]:
    for cond in env.get_pod(name).get("status", {}).get("conditions") or ():
        if cond.get("type") == "PodScheduled":
            return dict(cond)
    return {}


def reserved_gpus(env: Env) -> float:
    for line in env.extender.get("/metrics").decode().splitlines():
        if line.startswith("gpusched_gang_reserved_gpus "):
            return float(line.split()[1])
    return -1.0


def delete(env: Env, name: str) -> None:
    k8s.request(env.api, "DELETE", f"/api/v1/namespaces/default/pods/{name}", query={"gracePeriodSeconds": "0"})


@pytest.mark.gpusched_config(TIERS)
def test_gang_of_four_lands_whole_in_one_rack(gpusched: Env) -> None:
    two_racks(gpusched)
    gpusched.pod("squatter", 1, node="r0-n2", gpuIds=[0])  # rack r0 can hold only 3 whole nodes
    names = gang(gpusched, "train", 4)
    nodes = {name: gpusched.wait_bound(name) for name in names}
    assert sorted(nodes.values()) == ["r1-n0", "r1-n1", "r1-n2", "r1-n3"]
    plans = set()
    for rank, name in enumerate(names):
        ann = gpusched.get_pod(name)["metadata"]["annotations"]
        assert ann["gpusched.io/rank"] == str(rank)
        assert ann["gpusched.io/planned-node"] == nodes[name]
        assert ann["gpusched.io/topology-path"] == f"r1/{nodes[name]}"
        plans.add(ann["gpusched.io/gang-plan"])
    assert len(plans) == 1  # one plan, written on every member before the Bindings


@pytest.mark.parametrize("constraint", ["taint", "node-selector", "cpu"])
def test_a_gang_lands_whole_on_nodes_kube_scheduler_allows(gpusched: Env, constraint: str) -> None:
    """n0 would be gpusched's first choice (first by name, all equal), but kube-scheduler's own
    filters turn it away for the members: the plan stays inside the nodes kube-scheduler offers."""
    entry: dict[str, Any] = {}
    if constraint == "cpu":
        gpusched.cluster.create_gpu_node("n0", 8, cpu="2")
        gpusched.report("n0", 8)
        entry["cpu"] = "4"
    else:
        gpusched.node("n0", 8)
    pool = {"pool": "train"}
    gpusched.node("n1", 8, labels=pool)
    gpusched.node("n2", 8, labels=pool)
    if constraint == "taint":
        taint = {"key": "maintenance", "value": "drain", "effect": "NoSchedule"}
        k8s.request(
            gpusched.api,
            "PATCH",
            "/api/v1/nodes/n0",
            {"spec": {"taints": [taint]}},
            content_type="application/merge-patch+json",
        )
    spec = {"nodeSelector": pool} if constraint == "node-selector" else {}
    names = gang(gpusched, "g", 2, spec=spec, **entry)
    nodes = sorted(gpusched.wait_bound(n, timeout=90) for n in names)
    assert nodes == ["n1", "n2"]


def test_two_competing_gangs_finish_in_turn(gpusched: Env) -> None:
    gpusched.node("n0", 8)
    gpusched.node("n1", 8)
    first = gang(gpusched, "a", 2)
    second = gang(gpusched, "b", 2)
    bound: dict[str, str] = {}

    def one_gang_whole() -> str | None:
        for group, names in (("a", first), ("b", second)):
            nodes = [gpusched.get_pod(n)["spec"].get("nodeName") for n in names]
            if all(nodes):
                bound.update(zip(names, nodes, strict=True))
                return group
        return None

    winner = gpusched.wait_for(one_gang_whole, "one gang bound whole")
    loser = second if winner == "a" else first
    assert all(not gpusched.get_pod(n)["spec"].get("nodeName") for n in loser)
    # The winner's job ends; the other gang then gets the whole cluster.
    for name in first if winner == "a" else second:
        k8s.request(
            gpusched.api, "DELETE", f"/api/v1/namespaces/default/pods/{name}", query={"gracePeriodSeconds": "0"}
        )
    assert sorted(gpusched.wait_bound(n, timeout=60) for n in loser) == ["n0", "n1"]


@pytest.mark.gpusched_config({"gang": {"reservationTTLSeconds": 4}})
def test_gang_that_cannot_fit_is_unschedulable_on_every_member_and_holds_nothing(gpusched: Env) -> None:
    gpusched.node("n0", 8)
    gpusched.node("n1", 8)
    names = gang(gpusched, "big", 3)
    for name in names:
        gpusched.wait_for(lambda n=name: failed_scheduling(gpusched, n), f"FailedScheduling for {name}")
        # Unschedulable, not SchedulerError: kube-scheduler's preemption and cluster-autoscaler see it.
        # (A member that came before the others first reads "waiting for members".)
        condition = gpusched.wait_for(
            lambda n=name: (
                (c := scheduled_condition(gpusched, n)).get("reason") == "Unschedulable"
                and "gang of 3 x 8 GPUs does not fit in the cluster (best: 2)" in c.get("message", "")
                and c
            ),
            f"{name} marked Unschedulable for not fitting",
        )
        assert condition["status"] == "False"
    assert all(not gpusched.get_pod(n)["spec"].get("nodeName") for n in names)
    assert reserved_gpus(gpusched) == 0.0
    # Nothing is held for it: an ordinary 8-GPU pod still lands.
    gpusched.pod("plain", 8)
    assert gpusched.wait_bound("plain") in {"n0", "n1"}


def test_incomplete_gang_is_unschedulable_and_holds_nothing(gpusched: Env) -> None:
    gpusched.node("n0", 8)
    gpusched.node("n1", 8)
    gang(gpusched, "half", 2, create=1)  # the second member never comes
    condition = gpusched.wait_for(
        lambda: (c := scheduled_condition(gpusched, "half-0")).get("reason") == "Unschedulable" and c,
        "half-0 marked Unschedulable",
    )
    assert "waiting for members (1 of 2 exist)" in condition["message"], condition
    assert reserved_gpus(gpusched) == 0.0
    gpusched.pod("a", 8)
    gpusched.pod("b", 8)
    assert {gpusched.wait_bound("a"), gpusched.wait_bound("b")} == {"n0", "n1"}
    assert not gpusched.get_pod("half-0")["spec"].get("nodeName")


def priority_class(env: Env, name: str, value: int) -> None:
    body = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value}
    try:
        k8s.request(env.api, "POST", "/apis/scheduling.k8s.io/v1/priorityclasses", body)
    except ApiException as exc:
        if exc.status != 409:  # made by an earlier test
            raise


@pytest.mark.gpusched_config(TIERS)
def test_a_high_priority_gang_preempts_only_on_its_planned_nodes_and_lands_whole(gpusched: Env) -> None:
    """Leaf l0 holds a and b, leaf l1 holds c; every node is full of low-priority pods. The gang of
    2 x 8 GPUs fits leaf l0 once a's and b's pods go: c's pod, which kube-scheduler could also
    have evicted for one member, stays."""
    priority_class(gpusched, "gpusched-e2e-low", 0)
    priority_class(gpusched, "gpusched-e2e-high", 100000)
    for node, leaf in (("a", "l0"), ("b", "l0"), ("c", "l1")):
        gpusched.node(node, 8, labels={LEAF: leaf})
        low = pod_object({"name": f"low-{node}", "gpus": 8, "node": node, "gpuIds": list(range(8))})
        low["spec"].update({"priorityClassName": "gpusched-e2e-low", "terminationGracePeriodSeconds": 0})
        k8s.request(gpusched.api, "POST", "/api/v1/namespaces/default/pods", low)
    names = gang(gpusched, "hi", 2, spec={"priorityClassName": "gpusched-e2e-high"})
    # Each member nominated on its node; kube-scheduler counts the other's nomination against it,
    # and gpusched still plans the gang over both.
    nodes = sorted(gpusched.wait_bound(n, timeout=120) for n in names)
    assert nodes == ["a", "b"]
    remaining = {p["metadata"]["name"] for p in gpusched.pods()}
    assert "low-c" in remaining and not {"low-a", "low-b"} & remaining
