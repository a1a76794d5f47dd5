"""gpu-memory-packing (score): 100 x (c x used_after + (1 - c) x memory_fit)."""

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
from scheduler.plugins.gpu_memory_packing import GpuMemoryPacking
from tests.builders import GiB, gpu_node


def req(
    gpus: int = 0, milli: int = 0, memory_gib: int = 0, name: str = "p", node: str = "", gpu_ids: tuple[int, ...] = ()
) -> PodRequest:
    return PodRequest(
        "default", name, gpu_count=gpus, gpu_milli=milli, gpu_memory=memory_gib * GiB, node_name=node, gpu_ids=gpu_ids
    )


def held(node: str, *gpu_ids: int, milli: int = 0) -> PodRequest:
    return req(0 if milli else len(gpu_ids), milli, name=f"held-{node}", node=node, gpu_ids=gpu_ids)


def h100(name: str = "h100", **kw: Any) -> NodeState:
    return gpu_node(name, 8, "H100-80GB", 80, **kw)


def a100(name: str = "a100") -> NodeState:
    return gpu_node(name, 8, "A100-40GB", 40, "nvlink-pairs")


def l4(name: str = "l4") -> NodeState:
    return gpu_node(name, 4, "L4", 24, "pcie")


def scores(
    nodes: list[NodeState], p: PodRequest, args: dict[str, Any] | None = None, pods: tuple[PodRequest, ...] = ()
) -> list[float]:
    snap = ClusterSnapshot(nodes, pods)
    plugin = GpuMemoryPacking.create(args, None)
    return plugin.score(Cycle(snap, p, SchedulerConfig()), np.arange(len(nodes))).tolist()


HETERO = [h100(), a100(), l4()]


@pytest.mark.parametrize(
    ("nodes", "p", "args", "pods", "expected"),
    [
        pytest.param(
            HETERO,
            req(1),
            None,
            (),
            # c = 0.5 (default); used_after 1000/8000, 1000/8000, 1000/4000; no request: the smallest
            # chosen GPU (24 GiB) stands in, fit 24/80, 24/40, 24/24:
            # 100*(0.5*0.125 + 0.5*0.3) = 21.25, 100*(0.5*0.125 + 0.5*0.6) = 36.25, 100*(0.5*0.25 + 0.5*1) = 62.5
            [21.25, 36.25, 62.5],
            id="default: a small GPU on a small node",
        ),
        pytest.param(
            HETERO,
            req(1),
            {"countWeight": 0},
            (),
            [30.0, 60.0, 100.0],  # fit only: 100*24/80, 100*24/40, 100*24/24
            id="countWeight 0: memory fit only",
        ),
        pytest.param(
            HETERO,
            req(1),
            {"countWeight": 1},
            (),
            [12.5, 12.5, 25.0],  # used_after only: 100*1000/8000, 100*1000/8000, 100*1000/4000
            id="countWeight 1: node fill only",
        ),
        pytest.param(
            HETERO,
            req(1, memory_gib=30),
            {"countWeight": 0},
            (),
            # fit 30/80, 30/40; no L4 GPU has 30 GiB: no set, fit 0
            [37.5, 75.0, 0.0],
            id="a memory request",
        ),
        pytest.param(
            [h100(), a100()],
            req(2, memory_gib=30),
            {"countWeight": 0},
            (),
            [37.5, 75.0],  # per GPU: 30/80, 30/40
            id="a memory request per GPU of several",
        ),
        pytest.param(
            [h100("busy"), h100("idle")],
            req(1),
            {"countWeight": 1},
            (held("busy", 0, 1, 2, 3, 4, 5),),
            [87.5, 12.5],  # (6000 + 1000)/8000 = 0.875, 1000/8000 = 0.125
            id="pack onto the busy node",
        ),
        pytest.param(
            [h100("shared"), h100("idle")],
            req(milli=250),
            {"countWeight": 1},
            (held("shared", 0, milli=500),),
            [9.375, 3.125],  # (500 + 250)/8000 = 0.09375, 250/8000 = 0.03125
            id="shares count in milli-GPU",
        ),
        pytest.param(
            [h100("busy"), h100("idle")],
            req(2, memory_gib=40),
            None,
            (held("busy", 0, 1, 2, 3),),
            # used_after (4000 + 2000)/8000 = 0.75 and 2000/8000 = 0.25; fit 40/80 = 0.5 on both:
            # 100*(0.5*0.75 + 0.5*0.5) = 62.5, 100*(0.5*0.25 + 0.5*0.5) = 37.5
            [62.5, 37.5],
            id="both terms",
        ),
        pytest.param(
            [h100("bare", report_age_s=None), h100()],
            req(1),
            None,
            (),
            # bare: memory unknown, fit 0: 100*0.5*1000/8000 = 6.25; h100: the known 80 GiB stands in,
            # fit 80/80: 100*(0.5*0.125 + 0.5*1) = 56.25
            [6.25, 56.25],
            id="fallback: unknown memory fits 0",
        ),
        pytest.param(
            [h100("bare", report_age_s=None), gpu_node("bare-4", 4, report_age_s=None)],
            req(1),
            None,
            (),
            [6.25, 12.5],  # no memory known anywhere: the count term alone, 100*0.5*1000/8000, 100*0.5*1000/4000
            id="fallback: no memory known anywhere",
        ),
        pytest.param(HETERO, req(), None, (), [0.0, 0.0, 0.0], id="a cpu-only pod scores 0"),
    ],
)
def test_scores(
    nodes: list[NodeState],
    p: PodRequest,
    args: dict[str, Any] | None,
    pods: tuple[PodRequest, ...],
    expected: list[float],
) -> None:
    assert scores(nodes, p, args, pods) == pytest.approx(expected)


def test_the_default_policy_turns_the_count_term_off() -> None:
    plugin = next(p for p, _ in registry.build(registry.config_from(None)).scores if p.name == "gpu-memory-packing")
    assert isinstance(plugin, GpuMemoryPacking) and plugin.count_weight == 0.0


@pytest.mark.parametrize(
    ("args", "key"),
    [
        pytest.param({"countWeight": 2}, "countWeight", id="countWeight above 1"),
        pytest.param({"countWeight": -0.1}, "countWeight", id="countWeight below 0"),
        pytest.param({"countWeight": "0.5"}, "countWeight", id="countWeight as text"),
        pytest.param({"countweight": 0.5}, "countweight", id="unknown key (case matters)"),
    ],
)
def test_bad_args(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pluginArgs gpu-memory-packing\.{key}:"):
        GpuMemoryPacking.create(args)


def test_bad_args_are_caught_by_the_config_too() -> None:
    data = {"pluginArgs": {"gpu-memory-packing": {"countWeight": 2}}}
    with pytest.raises(ConfigError, match=r"pluginArgs gpu-memory-packing\.countWeight:"):
        registry.config_from(data)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 2, 4, 8]),
            st.sampled_from([24, 40, 80]),
            st.sets(st.integers(0, 7)),
            st.integers(0, 999),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, 8),
    st.sampled_from([0, 0, 300]),
    st.sampled_from([0, 20, 40, 100]),
    st.floats(0, 1),
)
def test_scores_stay_within_0_and_100(
    rows: list[tuple[int, int, set[int], int, bool]], gpus: int, milli: int, memory_gib: int, c: float
) -> None:
    nodes, pods = [], []
    for i, (count, gib, taken, share, reported) in enumerate(rows):
        nodes.append(gpu_node(f"n{i}", count, f"M{gib}", gib, report_age_s=0.0 if reported else None))
        whole = sorted(g for g in taken if g < count)
        if whole:
            pods.append(req(len(whole), name=f"w{i}", node=f"n{i}", gpu_ids=tuple(whole)))
        rest = [g for g in range(count) if g not in whole]
        if share and rest:
            pods.append(req(milli=share, name=f"s{i}", node=f"n{i}", gpu_ids=(rest[0],)))
    got = np.asarray(scores(nodes, req(0 if milli else gpus, milli, memory_gib), {"countWeight": c}, tuple(pods)))
    assert np.isfinite(got).all()
    assert ((got >= 0) & (got <= 100)).all()
