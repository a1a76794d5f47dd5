"""cuda (filter): the node's CUDA driver version is at least the pod's `gpusched.io/cuda`."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins.cuda import CudaDriver
from tests.builders import gpu_node, pod


def req(cuda: tuple[int, ...] = (), gpus: int = 1) -> PodRequest:
    return PodRequest("default", "p", gpu_count=gpus, cuda=cuda)


def node(name: str, cuda: tuple[int, ...] | None) -> NodeState:
    """A node whose driver reports `cuda`; None: no GPUNodeReport, so the version is unknown."""
    if cuda is None:
        return gpu_node(name, report_age_s=None)
    return gpu_node(name, cuda=cuda)


def run(nodes: list[NodeState], p: PodRequest) -> tuple[list[bool], dict[str, str]]:
    snap = ClusterSnapshot(nodes)
    cycle = Cycle(snap, p, SchedulerConfig())
    plugin = CudaDriver.create(None, None)
    every = np.arange(len(nodes))
    ok = np.asarray(plugin.filter(cycle, every), dtype=bool)
    return ok.tolist(), {snap.names[i]: plugin.reason(cycle, int(i)) for i in every[~ok]}


FOUR = [node("12.4", (12, 4)), node("12.2", (12, 2)), node("11.8", (11, 8)), node("none", None)]


@pytest.mark.parametrize(
    ("nodes", "p", "ok", "reasons"),
    [
        pytest.param(FOUR, req(), [True, True, True, True], {}, id="no requirement passes everywhere"),
        pytest.param(
            FOUR,
            req((12, 4)),
            # 12.4 -> 12*1000+4 = 12004; 12004 >= 12004, 12002 < 12004, 11008 < 12004, unknown -1 < 12004
            [True, False, False, False],
            {
                "12.2": "needs CUDA driver >= 12.4, node has 12.2",
                "11.8": "needs CUDA driver >= 12.4, node has 11.8",
                "none": "needs CUDA driver >= 12.4, version unknown (no GPUNodeReport)",
            },
            id="at least 12.4",
        ),
        pytest.param(
            FOUR,
            req((12,)),
            # 12 -> 12000: 12004 and 12002 >= 12000, 11008 < 12000
            [True, True, False, False],
            {
                "11.8": "needs CUDA driver >= 12.0, node has 11.8",
                "none": "needs CUDA driver >= 12.0, version unknown (no GPUNodeReport)",
            },
            id="major only",
        ),
        pytest.param(
            [node("12.10", (12, 10)), node("12.9", (12, 9))],
            req((12, 9)),
            # minors compare as numbers, not text: 12010 >= 12009, 12009 >= 12009
            [True, True],
            {},
            id="12.10 is newer than 12.9",
        ),
        pytest.param(
            [node("12.9", (12, 9))],
            req((12, 10)),
            [False],
            {"12.9": "needs CUDA driver >= 12.10, node has 12.9"},  # 12009 < 12010
            id="12.9 is older than 12.10",
        ),
        pytest.param(
            [node("13.0", (13, 0))],
            req((12, 8)),
            [True],  # 13000 >= 12008
            {},
            id="a newer major passes",
        ),
        pytest.param(
            [node("11.8", (11, 8))],
            req((12, 0), gpus=0),
            [False],  # the requirement applies to a cpu-only pod too: 11008 < 12000
            {"11.8": "needs CUDA driver >= 12.0, node has 11.8"},
            id="cpu-only pod with a requirement",
        ),
    ],
)
def test_filter_and_reasons(nodes: list[NodeState], p: PodRequest, ok: list[bool], reasons: dict[str, str]) -> None:
    assert run(nodes, p) == (ok, reasons)


def test_annotation_reaches_the_filter() -> None:
    p = parse_pod(pod("p", 1, {"gpusched.io/cuda": "12.3"}))
    assert p.cuda == (12, 3)
    assert run([node("12.4", (12, 4)), node("12.2", (12, 2))], p) == (
        [True, False],  # 12004 >= 12003, 12002 < 12003
        {"12.2": "needs CUDA driver >= 12.3, node has 12.2"},
    )


@pytest.mark.parametrize("args", [{"minVersion": "12.4"}, {"foo": 1}])
def test_takes_no_args(args: dict[str, Any]) -> None:
    key = next(iter(args))
    with pytest.raises(ConfigError, match=rf"pluginArgs cuda\.{key}: unknown argument"):
        CudaDriver.create(args)


versions = st.tuples(st.integers(10, 13), st.integers(0, 12))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), versions), min_size=1, max_size=6), st.one_of(st.just(()), versions))
def test_mask_is_the_version_order(have: list[tuple[int, int] | None], need: tuple[int, ...]) -> None:
    ok, reasons = run([node(f"n{i}", v) for i, v in enumerate(have)], req(need))
    # Tuples compare (major, minor) as numbers; an unknown version meets no requirement.
    assert ok == [not need or (v is not None and v >= need) for v in have]
    assert set(reasons) == {f"n{i}" for i, fits in enumerate(ok) if not fits}
