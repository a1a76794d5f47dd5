"""least-allocated (score): kube-scheduler's NodeResourcesFit LeastAllocated strategy."""

from typing import Any

import numpy as np
import pytest

from scheduler.core.config import ConfigError
from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.baselines.least_allocated import LeastAllocated
from tests.unit.plugins.baselines.helpers import GiB, req, scores, single, snap_of, trace_node


def test_least_allocated_is_kube_schedulers_formula() -> None:
    snap = ClusterSnapshot([trace_node("a", cpu=10_000, memory=10 * GiB), trace_node("b", cpu=20_000, memory=10 * GiB)])
    snap.place(req("r", cpu=5000, memory=5 * GiB), 1)
    got = scores(single("least-allocated"), snap, req(cpu=1000, memory=1 * GiB))
    # a: cpu (10000-1000)*100//10000 = 90, memory 90 -> 90; b: cpu (20000-6000)*100//20000 = 70, memory 40 -> 55
    assert got == {0: 90.0, 1: 55.0}


def test_least_allocated_can_count_gpus() -> None:
    snap = snap_of([[1000] * 8, [1000, 1000, 0, 0, 0, 0, 0, 0]])
    fw = single("least-allocated", resources=[{"name": "gpu", "weight": 1}])
    assert scores(fw, snap, req(gpus=1)) == {0: 87.0, 1: 12.0}


@pytest.mark.parametrize("resources", [[{"name": "disk"}], [{"name": "cpu", "weight": 0}], []])
def test_least_allocated_rejects_bad_resources(resources: Any) -> None:
    with pytest.raises(ConfigError):
        single("least-allocated", resources=resources)


def busy_and_cpu_only() -> ClusterSnapshot:
    """a: 8 CPUs, 32 GiB, 8 GPUs, a pod holding 2 CPUs, 4 GiB and 4 GPUs; b: 8 CPUs, 32 GiB, no GPU."""
    snap = ClusterSnapshot([trace_node("a", 8, 8000, 32 * GiB), trace_node("b", 0, 8000, 32 * GiB)])
    snap.place(req("r", gpus=4, cpu=2000, memory=4 * GiB), 0)
    return snap


CPU, MEMORY, GPU = {"name": "cpu"}, {"name": "memory"}, {"name": "gpu"}


# s_r = (capacity - requested) * 100 // capacity, requested = the node's pods + this pod; 0 when it exceeds
# the capacity or the capacity is 0. score = sum s_r * w_r // sum w_r. Called on both nodes directly.
@pytest.mark.parametrize(
    ("pod", "resources", "expected"),
    [
        pytest.param(
            req(gpus=1, cpu=1000, memory=2 * GiB),
            None,
            # a: cpu (8000-3000)*100//8000 = 62, memory (32-6)*100//32 = 81 -> (62+81)//2 = 71
            # b: cpu (8000-1000)*100//8000 = 87, memory (32-2)*100//32 = 93 -> (87+93)//2 = 90
            [71.0, 90.0],
            id="default: cpu and memory",
        ),
        pytest.param(req(gpus=1, cpu=1000, memory=2 * GiB), [CPU], [62.0, 87.0], id="cpu only"),
        pytest.param(
            req(gpus=1, cpu=1000, memory=2 * GiB),
            [GPU],
            # a: (8000-5000)*100//8000 = 37; b has no GPU: capacity 0 -> 0
            [37.0, 0.0],
            id="gpu only",
        ),
        pytest.param(
            req(gpus=1, cpu=1000, memory=2 * GiB),
            [CPU, {"name": "gpu", "weight": 3}],
            [43.0, 21.0],  # a: (62*1 + 37*3)//4 = 173//4 = 43; b: (87*1 + 0*3)//4 = 21
            id="gpu weighs 3",
        ),
        pytest.param(
            req(gpus=1, cpu=1000, memory=2 * GiB),
            [CPU, MEMORY, GPU],
            [60.0, 60.0],  # a: (62+81+37)//3 = 60; b: (87+93+0)//3 = 60
            id="all three",
        ),
        pytest.param(
            req(cpu=7000, memory=2 * GiB),
            None,
            # a: cpu 2000+7000 = 9000 > 8000 -> 0, memory 81 -> (0+81)//2 = 40
            # b: cpu (8000-7000)*100//8000 = 12, memory 93 -> (12+93)//2 = 52
            [40.0, 52.0],
            id="more than the capacity scores 0",
        ),
        pytest.param(req(milli=500), [GPU], [43.0, 0.0], id="a share in milli-GPU"),  # (8000-4500)*100//8000 = 43
    ],
)
def test_least_allocated_scores(pod: PodRequest, resources: list[dict[str, Any]] | None, expected: list[float]) -> None:
    plugin = LeastAllocated.create({"resources": resources} if resources else None)
    snap = busy_and_cpu_only()
    assert plugin.score(Cycle(snap, pod, plugin.config), np.arange(2)).tolist() == expected
