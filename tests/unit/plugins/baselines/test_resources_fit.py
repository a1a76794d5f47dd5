"""resources-fit (filter): the node has the pod's CPU and memory requests free."""

import numpy as np
import pytest

from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.baselines.resources_fit import ResourcesFit
from tests.unit.plugins.baselines.helpers import GiB, req, single, trace_node


def test_resources_fit_filters_cpu_and_memory_with_reasons() -> None:
    snap = ClusterSnapshot([trace_node("a", cpu=2000, memory=GiB), trace_node("b", cpu=8000, memory=64 * GiB)])
    d = single("best-fit").decide(snap, req(cpu=4000, memory=2 * GiB))
    assert d.feasible.tolist() == [1]
    assert d.reasons[0] == "needs 4 CPU, 2 free"
    d = single("best-fit").decide(snap, req(cpu=1000, memory=2 * GiB))
    assert d.reasons[0] == "needs 2.0GiB memory, 1.0GiB free"


def cluster() -> ClusterSnapshot:
    """small: 2 CPUs, 1 GiB; big: 8 CPUs, 64 GiB; unknown: no allocatable CPU or memory (0);
    busy: 8 CPUs and 64 GiB of which a pod holds 7.8 CPUs and 60 GiB."""
    snap = ClusterSnapshot(
        [
            trace_node("small", cpu=2000, memory=GiB),
            trace_node("big", cpu=8000, memory=64 * GiB),
            trace_node("unknown", cpu=0, memory=0),
            trace_node("busy", cpu=8000, memory=64 * GiB),
        ]
    )
    snap.place(req("held", cpu=7800, memory=60 * GiB), 3)
    return snap


# fits = cpu_free >= cpu request and memory_free >= memory request (free = allocatable - held)
@pytest.mark.parametrize(
    ("pod", "ok", "reasons"),
    [
        pytest.param(
            req(cpu=4000, memory=2 * GiB),
            [False, True, False, False],
            {
                "small": "needs 4 CPU, 2 free",  # 2000 < 4000
                "unknown": "needs 4 CPU, 0 free",  # 0 < 4000
                "busy": "needs 4 CPU, 0.2 free",  # 8000 - 7800 = 200 < 4000
            },
            id="cpu short",
        ),
        pytest.param(
            req(cpu=100, memory=2 * GiB),
            [False, True, False, True],  # busy: 200 >= 100 CPU and 64 - 60 = 4 GiB >= 2 GiB
            {
                "small": "needs 2.0GiB memory, 1.0GiB free",  # 1 GiB < 2 GiB
                "unknown": "needs 0.1 CPU, 0 free",  # CPU is checked first
            },
            id="memory short",
        ),
        pytest.param(
            req(cpu=2000, memory=GiB),
            [True, True, False, False],  # small: 2000 >= 2000 and 1 GiB >= 1 GiB
            {"unknown": "needs 2 CPU, 0 free", "busy": "needs 2 CPU, 0.2 free"},
            id="an exact fit fits",
        ),
        pytest.param(
            req(cpu=100, memory=5 * GiB),
            [False, True, False, False],
            {
                "small": "needs 5.0GiB memory, 1.0GiB free",
                "unknown": "needs 0.1 CPU, 0 free",
                "busy": "needs 5.0GiB memory, 4.0GiB free",  # 64 - 60 = 4 GiB < 5 GiB
            },
            id="memory held by other pods",
        ),
        pytest.param(req(cpu=0), [True, True, True, True], {}, id="fallback: nothing requested fits everywhere"),
    ],
)
def test_resources_fit_filter_and_reasons(pod: PodRequest, ok: list[bool], reasons: dict[str, str]) -> None:
    snap = cluster()
    plugin = ResourcesFit.create()
    cycle = Cycle(snap, pod, plugin.config)
    every = np.arange(len(snap))
    mask = np.asarray(plugin.filter(cycle, every), dtype=bool)
    assert mask.tolist() == ok
    assert {snap.names[i]: plugin.reason(cycle, int(i)) for i in every[~mask]} == reasons
