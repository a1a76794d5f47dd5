"""The default topology tiers read the labels clusters already carry: a gang is planned inside one
Topograph leaf switch, one GKE subblock or block, or one NVLink clique, with no topologyTiers set."""

from __future__ import annotations

import pytest

from scheduler.core import topology
from scheduler.core.gang import GangPlan, GangRefusal, plan_gang
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins import registry
from tests.builders import gpu_node, pod

CONFIG = registry.config_from(None)  # no topologyTiers: the defaults
FW = registry.build(CONFIG)


def member(size: int, gpus: int = 8) -> PodRequest:
    return parse_pod(
        pod("m", gpus, {"gpusched.io/min-member": str(size)}, labels={"scheduling.x-k8s.io/pod-group": "g"})
    )


def busy(node: str, name: str) -> PodRequest:
    return parse_pod(pod(name, 1, node=node, gpuIds=[0]))


def plan(nodes: list[NodeState], size: int, running: list[PodRequest] | None = None) -> GangPlan:
    result = plan_gang(ClusterSnapshot(nodes, running or [], CONFIG.tiers), FW, member(size), size)
    assert isinstance(result, GangPlan), result
    return result


def test_the_defaults_are_the_standard_keys_outermost_first() -> None:
    assert (
        CONFIG.tiers
        == topology.DEFAULT_TIERS
        == (
            "topology.kubernetes.io/zone",
            "network.topology.nvidia.com/core",
            "network.topology.nvidia.com/spine",
            "network.topology.nvidia.com/leaf",
            "network.topology.nvidia.com/accelerator",
            "cloud.google.com/gce-topology-block",
            "cloud.google.com/gce-topology-subblock",
            "cloud.google.com/gce-topology-host",
            "nvidia.com/gpu.clique",
            "kubernetes.io/hostname",
        )
    )


def topograph(spine: str, leaf: str, count: int) -> list[NodeState]:
    return [
        gpu_node(
            f"{leaf}-{i}",
            8,
            labels={
                "network.topology.nvidia.com/core": "c0",
                "network.topology.nvidia.com/spine": spine,
                "network.topology.nvidia.com/leaf": leaf,
            },
        )
        for i in range(count)
    ]


def test_a_topograph_cluster_places_a_gang_inside_one_leaf() -> None:
    nodes = topograph("s1", "l1", 4) + topograph("s1", "l2", 4) + topograph("s2", "l3", 4)
    # l1 has a GPU taken, so only 3 of its nodes are whole; l2 is the first leaf with 4.
    got = plan(nodes, 4, [busy("l1-2", "x")])
    assert {s.node for s in got.slots} == {"l2-0", "l2-1", "l2-2", "l2-3"}
    assert got.span == "leaf switch"


def test_a_topograph_gang_too_big_for_any_leaf_stays_under_one_spine() -> None:
    nodes = topograph("s1", "l1", 3) + topograph("s1", "l2", 3) + topograph("s2", "l3", 3)
    got = plan(nodes, 5)  # no leaf has 5 nodes; spine s1 has 3 + 3 = 6
    assert {s.node.split("-")[0] for s in got.slots} <= {"l1", "l2"}
    assert got.span == "spine switch"


def gke(block: str, subblock: str, count: int) -> list[NodeState]:
    return [
        gpu_node(
            f"{block}-{subblock}-{i}",
            8,
            labels={
                "topology.kubernetes.io/zone": "us-central1-a",
                "cloud.google.com/gce-topology-block": block,
                "cloud.google.com/gce-topology-subblock": subblock,
                "cloud.google.com/gce-topology-host": f"host-{block}-{subblock}-{i}",
            },
        )
        for i in range(count)
    ]


def test_a_gke_cluster_places_a_gang_inside_one_block() -> None:
    nodes = gke("b1", "sb1", 2) + gke("b1", "sb2", 2) + gke("b2", "sb1", 2) + gke("b2", "sb2", 2)
    # 4 nodes: no subblock has them (2 each), block b2 does once b1 has a GPU taken.
    got = plan(nodes, 4, [busy("b1-sb1-0", "x")])
    assert {s.node for s in got.slots} == {"b2-sb1-0", "b2-sb1-1", "b2-sb2-0", "b2-sb2-1"}
    assert got.span == "block"
    # Consecutive ranks stay in one subblock.
    by_rank = [s.node for s in sorted(got.slots, key=lambda s: s.rank)]
    assert by_rank[0].rsplit("-", 1)[0] == by_rank[1].rsplit("-", 1)[0]
    # 2 nodes fit in a subblock (sb1 of b2 here: sb1 of b1 has a GPU taken).
    assert plan(nodes, 2, [busy("b1-sb1-0", "x")]).span == "subblock"


def test_subblocks_of_the_same_name_in_two_blocks_are_two_subblocks() -> None:
    # "sb1" in b1 and "sb1" in b2 are different racks: an inner tier is qualified by the outer ones.
    nodes = gke("b1", "sb1", 1) + gke("b2", "sb1", 1)
    assert plan(nodes, 2).span == "zone"


def test_an_nvlink_clique_spanning_nodes_holds_a_gang_before_its_leaf() -> None:
    clique = "nvidia.com/gpu.clique"
    nodes = topograph("s1", "l1", 4)
    for i, node in enumerate(nodes):
        node.labels[clique] = f"uuid.{i // 2}"  # two NVL domains of two nodes each under one leaf
    got = plan(nodes, 2, [busy("l1-0", "x")])
    assert {s.node for s in got.slots} == {"l1-2", "l1-3"}
    assert got.span == "NVLink domain"


@pytest.mark.parametrize(
    "labels",
    [
        {},  # no topology labels at all
        {"example.com/rack": "r1"},  # the cluster's own key, not in the defaults
    ],
)
def test_nodes_without_standard_labels_group_only_as_the_cluster(labels: dict[str, str]) -> None:
    nodes = [gpu_node(f"n{i}", 8, labels=dict(labels)) for i in range(2)]
    assert plan(nodes, 2).span == "cluster"


def test_topology_tiers_stay_configurable_for_a_clusters_own_labels() -> None:
    config = registry.config_from({"topologyTiers": ["example.com/rack", "kubernetes.io/hostname"]})
    nodes = [gpu_node(f"r{r}-{i}", 8, labels={"example.com/rack": f"r{r}"}) for r in range(2) for i in range(2)]
    snap = ClusterSnapshot(nodes, [busy("r0-0", "x")], config.tiers)
    got = plan_gang(snap, registry.build(config), member(2), 2)
    assert isinstance(got, GangPlan) and got.span == "example.com/rack"
    assert {s.node for s in got.slots} == {"r1-0", "r1-1"}
    within_rack = plan_gang(snap, registry.build(config), member(2), 2, max_span="example.com/rack")
    assert isinstance(within_rack, GangPlan)  # r1 holds it
    full = ClusterSnapshot(nodes, [busy("r0-0", "x"), busy("r1-0", "y")], config.tiers)
    assert isinstance(plan_gang(full, registry.build(config), member(2), 2, max_span="example.com/rack"), GangRefusal)
