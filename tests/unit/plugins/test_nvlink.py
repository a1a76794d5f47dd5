"""nvlink (score): 100 x the mean pair affinity of the best free GPU set, for pods of 2+ GPUs."""

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins import registry
from scheduler.plugins.nvlink import NvLink
from tests.builders import gpu_node

# Affinity (types.LINK_AFFINITY): nvlink 1.0, PIX 0.4, PXB 0.35, PHB 0.25, NODE 0.15, SYS 0.0.
# nvlink-pairs on 8 GPUs: {0,1} {2,3} {4,5} {6,7} NVLink, PHB within a half (0-3, 4-7), SYS across.
# pcie on 8 GPUs: PXB within a half, SYS across.


def req(gpus: int = 0, milli: int = 0, name: str = "p", node: str = "", gpu_ids: tuple[int, ...] = ()) -> PodRequest:
    return PodRequest("default", name, gpu_count=gpus, gpu_milli=milli, node_name=node, gpu_ids=gpu_ids)


def held(node: str, *gpu_ids: int) -> PodRequest:
    return req(len(gpu_ids), name=f"held-{node}", node=node, gpu_ids=gpu_ids)


def wired(name: str, links: tuple[tuple[str, ...], ...]) -> NodeState:
    """A node of len(links) GPUs wired as given."""
    return replace(gpu_node(name, len(links)), links=links)


# 3 GPUs: 0-1 on one PCIe switch, 0-2 on one NUMA node, 1-2 across sockets.
THREE = (("", "PIX", "NODE"), ("PIX", "", "SYS"), ("NODE", "SYS", ""))


def scores(nodes: list[NodeState], p: PodRequest, pods: tuple[PodRequest, ...] = ()) -> list[float]:
    snap = ClusterSnapshot(nodes, pods)
    return NvLink.create(None, None).score(Cycle(snap, p, SchedulerConfig()), np.arange(len(nodes))).tolist()


@pytest.mark.parametrize(
    ("nodes", "p", "pods", "expected"),
    [
        pytest.param([gpu_node("n", 8, interconnect="nvswitch")], req(8), (), [100.0], id="nvswitch: all NVLink"),
        pytest.param(
            [gpu_node("n", 8, interconnect="nvlink-pairs")], req(2), (), [100.0], id="nvlink-pairs: one linked pair"
        ),
        pytest.param(
            [gpu_node("n", 8, interconnect="nvlink-pairs")],
            req(4),
            (),
            [50.0],  # {0,1,2,3}: 2 NVLink + 4 PHB pairs: 100 * (2*1.0 + 4*0.25) / 6 = 50
            id="nvlink-pairs: four GPUs of one half",
        ),
        pytest.param(
            [gpu_node("n", 8, interconnect="nvlink-pairs")],
            req(8),
            (),
            [100 * 6 / 28],  # 28 pairs: 4 NVLink + 8 PHB + 16 SYS: 100 * (4*1.0 + 8*0.25) / 28 = 21.43
            id="nvlink-pairs: all eight",
        ),
        pytest.param([gpu_node("n", 8, interconnect="pcie")], req(2), (), [35.0], id="pcie: one PXB pair"),
        pytest.param(
            [gpu_node("n", 8, interconnect="pcie")],
            req(8),
            (),
            [15.0],  # 28 pairs: 12 PXB + 16 SYS: 100 * 12*0.35 / 28 = 15
            id="pcie: all eight",
        ),
        pytest.param(
            [gpu_node("n", 8, interconnect="nvlink-pairs")],
            req(2),
            (held("n", 1, 3, 5, 7),),
            [25.0],  # free 0,2,4,6: best pair 0-2 (or 4-6) is PHB: 100 * 0.25 = 25
            id="scattered free GPUs: no linked pair left",
        ),
        pytest.param(
            [gpu_node("n", 8, interconnect="nvlink-pairs")],
            req(4),
            (held("n", 1, 3, 5, 7),),
            [100 * 0.5 / 6],  # {0,2,4,6}: 0-2 and 4-6 PHB, 4 SYS: 100 * 2*0.25 / 6 = 8.33
            id="scattered free GPUs: four of them",
        ),
        pytest.param([wired("n", THREE)], req(2), (), [40.0], id="custom wiring: the PIX pair"),  # 100 * 0.4
        pytest.param(
            [wired("n", THREE)], req(3), (), [100 * 0.55 / 3], id="custom wiring: all three"
        ),  # 100 * (0.4 + 0.15 + 0) / 3 = 18.33
        pytest.param(
            [gpu_node("a", 8, interconnect="nvswitch"), gpu_node("b", 8, interconnect="pcie")],
            req(1),
            (),
            [100.0, 100.0],
            id="one GPU has no pairs",
        ),
        pytest.param([gpu_node("a", 8, interconnect="pcie")], req(milli=300), (), [100.0], id="a share has no pairs"),
        pytest.param([gpu_node("a", 8, interconnect="pcie")], req(), (), [100.0], id="a cpu-only pod has no pairs"),
        pytest.param(
            [gpu_node("bare", 8, report_age_s=None), gpu_node("n", 8)],
            req(2),
            (),
            [0.0, 100.0],
            id="no report: links unknown count 0",
        ),
        pytest.param([gpu_node("small", 2), gpu_node("n", 8)], req(4), (), [0.0, 100.0], id="no set of that size: 0"),
    ],
)
def test_scores(nodes: list[NodeState], p: PodRequest, pods: tuple[PodRequest, ...], expected: list[float]) -> None:
    assert scores(nodes, p, pods) == pytest.approx(expected, rel=1e-6)  # affinities are float32


def test_the_scored_set_is_the_one_bind_hands_out() -> None:
    cfg = registry.config_from({"plugins": {"filter": ["gpu-fit"], "score": [{"name": "nvlink", "weight": 1}]}})
    fw = registry.build(cfg)
    snap = ClusterSnapshot([gpu_node("n", 8, interconnect="nvlink-pairs")], [held("n", 0, 3, 5)])
    # free 1,2,4,6,7: the only NVLink pair left is 6-7
    assert fw.choose_gpus(snap, req(2), 0) == (6, 7)
    assert NvLink.create().score(Cycle(snap, req(2), cfg), np.arange(1)).tolist() == [100.0]


@pytest.mark.parametrize("args", [{"foo": 1}, {"minGpus": 2}])
def test_takes_no_args(args: dict[str, Any]) -> None:
    key = next(iter(args))
    with pytest.raises(ConfigError, match=rf"pluginArgs nvlink\.{key}: unknown argument"):
        NvLink.create(args)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 2, 4, 8]),
            st.sampled_from(["nvswitch", "nvlink-pairs", "pcie"]),
            st.sets(st.integers(0, 7)),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, 8),
    st.sampled_from([0, 0, 500]),
)
def test_scores_stay_within_0_and_100(rows: list[tuple[int, str, set[int], bool]], gpus: int, milli: int) -> None:
    nodes = [
        gpu_node(f"n{i}", count, interconnect=kind, report_age_s=0.0 if reported else None)
        for i, (count, kind, _, reported) in enumerate(rows)
    ]
    pods = tuple(
        held(f"n{i}", *sorted(g for g in taken if g < count))
        for i, (count, _, taken, _) in enumerate(rows)
        if any(g < count for g in taken)
    )
    got = np.asarray(scores(nodes, req(0 if milli else gpus, milli), pods))
    assert np.isfinite(got).all()
    assert ((got >= 0) & (got <= 100)).all()
