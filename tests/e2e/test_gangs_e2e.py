"""Gangs through the real kube-scheduler: whole or not at all, in one rack, never deadlocked."""

from __future__ import annotations

import pytest

from localcluster import k8s
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e


def two_racks(env: Env, per_rack: int = 4) -> None:
    for r in range(2):
        for i in range(per_rack):
            env.node(f"r{r}-n{i}", 8, labels={"gpusched.io/rack": f"r{r}"})


def gang(env: Env, group: str, size: int, gpus: int = 8, create: int | None = None) -> list[str]:
    names = []
    for rank in range(size if create is None else create):
        name = f"{group}-{rank}"
        labels = {"scheduling.x-k8s.io/pod-group": group, "batch.kubernetes.io/job-completion-index": str(rank)}
        env.pod(name, gpus, annotations={"gpusched.io/min-member": str(size)}, labels=labels)
        names.append(name)
    return names


def failed_scheduling(env: Env, name: str) -> list[str]:
    return [e for e in env.events_for(name) if e.startswith("FailedScheduling")]


def test_gang_of_four_lands_whole_in_one_rack(gpusched: Env) -> None:
    two_racks(gpusched)
    gpusched.pod("squatter", 1, node="r0-n2", gpuIds=[0])  # rack r0 can hold only 3 whole nodes
    names = gang(gpusched, "train", 4)
    nodes = {name: gpusched.wait_bound(name) for name in names}
    assert sorted(nodes.values()) == ["r1-n0", "r1-n1", "r1-n2", "r1-n3"]
    for rank, name in enumerate(names):
        ann = gpusched.get_pod(name)["metadata"]["annotations"]
        assert ann["gpusched.io/rank"] == str(rank)
        assert ann["gpusched.io/planned-node"] == nodes[name]
        assert ann["gpusched.io/topology-path"].endswith(f"/r1/{nodes[name]}")


@pytest.mark.gpusched_config({"gang": {"reservationTTLSeconds": 4}})
def test_gang_that_cannot_fit_stays_pending_and_holds_nothing(gpusched: Env) -> None:
    gpusched.node("n0", 8)
    gpusched.node("n1", 8)
    names = gang(gpusched, "big", 3)
    for name in names:
        gpusched.wait_for(lambda n=name: failed_scheduling(gpusched, n), f"FailedScheduling for {name}")
    events = failed_scheduling(gpusched, names[0])
    assert any("gang of 3 x 8 GPUs does not fit in the cluster (best: 2)" in e for e in events), events
    assert all(not gpusched.get_pod(n)["spec"].get("nodeName") for n in names)
    # Nothing is held for it: an ordinary 8-GPU pod still lands.
    gpusched.pod("plain", 8)
    assert gpusched.wait_bound("plain") in {"n0", "n1"}


@pytest.mark.gpusched_config({"gang": {"reservationTTLSeconds": 3}})
def test_incomplete_gang_releases_its_reservation(gpusched: Env) -> None:
    gpusched.node("n0", 8)
    gpusched.node("n1", 8)
    gang(gpusched, "half", 2, create=1)  # the second member never comes
    gpusched.wait_for(lambda: any("waiting for members" in e for e in failed_scheduling(gpusched, "half-0")), "wait")

    def reserved() -> float:
        for line in gpusched.extender.get("/metrics").decode().splitlines():
            if line.startswith("gpusched_gang_reserved_gpus "):
                return float(line.split()[1])
        return -1.0

    gpusched.wait_for(lambda: reserved() == 0.0, "the reservation to expire", timeout=30)
    gpusched.pod("a", 8)
    gpusched.pod("b", 8)
    assert {gpusched.wait_bound("a"), gpusched.wait_bound("b")} == {"n0", "n1"}
    assert not gpusched.get_pod("half-0")["spec"].get("nodeName")


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
