import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot, SnapshotError
from scheduler.core.types import GpuInfo
from tests.builders import gpu_node, pod


def test_pods_hold_the_gpus_they_were_given() -> None:
    snap = ClusterSnapshot([gpu_node("a", gpus=4)])
    snap.place(parse_pod(pod("p", gpus=2)), 0, (1, 3))
    assert snap.gpu_milli_free[0].tolist() == [1000, 0, 1000, 0]
    assert snap.gpu_free_count()[0] == 2
    snap.remove("default/p")
    assert snap.gpu_free_count()[0] == 4


def test_kubelet_view_beats_gpusched_annotation() -> None:
    node = gpu_node("a", gpus=4)
    node = type(node)(
        **{
            **{f: getattr(node, f) for f in node.__slots__},
            "gpus": tuple(GpuInfo(i, "H100", 1, holders=("default/p",) if i == 2 else ()) for i in range(4)),
        }
    )
    running = parse_pod(pod("p", gpus=1, node="a", gpuIds=[0]))
    snap = ClusterSnapshot([node], [running])
    assert snap.placements["default/p"].gpus == (2,)


def test_place_refuses_what_does_not_fit() -> None:
    snap = ClusterSnapshot([gpu_node("a", gpus=2)])
    with pytest.raises(SnapshotError):
        snap.place(parse_pod(pod("p", gpus=3)), 0)
    with pytest.raises(SnapshotError):
        snap.place(parse_pod(pod("q", gpus=1)), 0, (7,))


def test_tiers_qualify_inner_labels_by_outer_ones() -> None:
    nodes = [
        gpu_node("a", labels={"topology.kubernetes.io/zone": "z1", "network.topology.nvidia.com/leaf": "r1"}),
        gpu_node("b", labels={"topology.kubernetes.io/zone": "z2", "network.topology.nvidia.com/leaf": "r1"}),
        gpu_node("c", labels={"topology.kubernetes.io/zone": "z1", "network.topology.nvidia.com/leaf": "r1"}),
        gpu_node("d"),
    ]
    snap = ClusterSnapshot(nodes)
    rack = snap.tier_keys.index("network.topology.nvidia.com/leaf")
    ids = snap.tier_ids[:, rack]
    assert ids[0] == ids[2] != ids[1]
    assert len(set(ids.tolist())) == 3  # d is alone in its rack


def test_without_restores_exact_gpus() -> None:
    snap = ClusterSnapshot([gpu_node("a", gpus=4)], [parse_pod(pod("p", gpus=2, node="a", gpuIds=[2, 3]))])
    with snap.without(["default/p"]):
        assert snap.gpu_free_count()[0] == 4
    assert snap.placements["default/p"].gpus == (2, 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 8)), max_size=40))
def test_place_and_remove_never_overcommit(ops: list[tuple[int, int]]) -> None:
    snap = ClusterSnapshot([gpu_node(f"n{i}", gpus=8) for i in range(3)])
    for k, (node, count) in enumerate(ops):
        with contextlib.suppress(SnapshotError):
            snap.place(parse_pod(pod(f"p{k}", gpus=count)), node)
        if k % 3 == 2:
            snap.remove(f"default/p{k - 1}")
        assert snap.over_committed() == []
        assert np.all(snap.gpu_milli_free >= 0)
