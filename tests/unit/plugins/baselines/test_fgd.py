"""fgd (score): int(100 * sigmoid((frag_before - frag_after) / 1000)), FGD's measure for the typical pods."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError
from scheduler.core.fragmentation import TypicalPod
from scheduler.core.framework import Cycle, Framework
from scheduler.core.types import PodRequest
from simulations.policies import typical_args
from tests.unit.fragmentation_cases import CPU_ONLY, SHARE500, WHOLE, node_st, pods_st
from tests.unit.plugins.baselines.helpers import req, scores, single, snap_of


def fgd(typical: Sequence[TypicalPod], **args: Any) -> Framework:
    return single("fgd", typicalPods=typical_args(typical), **args)


def test_fgd_scores_the_sigmoid_of_the_delta_as_an_integer() -> None:
    # Two 2-GPU nodes; node 1 has a share taken. A 500 share on node 1's half-used GPU removes its
    # fragment; on node 0 it breaks a whole GPU.
    snap = snap_of([[1000, 1000], [1000, 500]], [10_000, 10_000])
    fw = fgd([WHOLE])
    d = fw.decide(snap, req("s", milli=500))
    got = dict(zip(d.feasible.tolist(), d.scores["fgd"].tolist(), strict=True))
    # node 0: frag 0 -> 500 (the share left on GPU 0), delta -500; node 1: 500 -> 0, delta +500.
    assert got == {0: float(int(100 / (1 + np.exp(0.5)))), 1: float(int(100 / (1 + np.exp(-0.5))))}
    assert d.best() == 1
    assert fw.choose_gpus(snap, req("s", milli=500), 1) == (1,)


def test_fgd_ties_go_to_the_first_node() -> None:
    snap = snap_of([[1000, 1000]] * 3, [10_000] * 3)
    fw = fgd([WHOLE])
    d = fw.decide(snap, req("w", gpus=1))
    assert len(set(d.scores["fgd"].tolist())) == 1 and d.best() == 0
    assert fw.choose_gpus(snap, req("w", gpus=1), 0) == (0,)


# frag_t: the free milli-GPU on GPUs too small for t's share if one t fits the node, else all of it;
# frag = sum_t w_t * frag_t / sum_t w_t. score = int(100 / (1 + exp(-delta / 1000))).
@pytest.mark.parametrize(
    ("frees", "cpus", "typical", "pod", "expected"),
    [
        pytest.param(
            [[1000, 1000]],
            [10_000],
            [WHOLE],
            req(gpus=1),
            {0: 50.0},  # 0 -> 0: int(100 * sigmoid(0)) = 50
            id="a whole GPU strands nothing",
        ),
        pytest.param(
            [[1000, 600]],
            [10_000],
            [WHOLE],
            req(milli=500),
            # before 600 (GPU 1 is too small for a whole GPU); best GPU 1: [1000, 100] -> 100, delta +500
            # (GPU 0: [500, 600] -> nothing fits, 1100, delta -500): int(100 * sigmoid(0.5)) = 62
            {0: 62.0},
            id="a share on the best of its GPUs",
        ),
        pytest.param(
            [[1000, 700]],
            [10_000],
            [SHARE500],
            req(milli=500),
            # before 0 (both >= 500); GPU 0: [500, 700] -> 0, delta 0 (GPU 1: [1000, 200] -> 200, delta -200)
            {0: 50.0},
            id="a share where both GPUs stay usable",
        ),
        pytest.param(
            [[1000, 1000]],
            [10_000],
            [TypicalPod(8000, 1, 1000, (), 1)],
            req(cpu=4000),
            # CPU 10000 -> 6000 < 8000: the typical pod no longer fits, 0 -> 2000: int(100 * sigmoid(-2)) = 11
            {0: 11.0},
            id="a cpu-only pod that takes the CPU a GPU pod needs",
        ),
        pytest.param(
            [[1000, 1000]],
            [10_000],
            [WHOLE, TypicalPod(1000, 0, 0, (), 3)],
            req(gpus=1),
            # WHOLE: 0 -> 0; the CPU-only pod strands all free GPU: 2000 -> 1000. w_all = 4:
            # (1*0 + 3*1000) / 4 = 750: int(100 * sigmoid(0.75)) = 67
            {0: 67.0},
            id="weights of the typical pods",
        ),
        pytest.param(
            [[1000, 1000], [0, 300]],
            [10_000, 10_000],
            [WHOLE],
            req(cpu=0),
            {0: 100.0, 1: 100.0},
            id="a pod that requests nothing scores 100",
        ),
    ],
)
def test_fgd_scores(
    frees: list[list[int]], cpus: list[int], typical: list[TypicalPod], pod: PodRequest, expected: dict[int, float]
) -> None:
    assert scores(fgd(typical), snap_of(frees, cpus), pod) == expected


@pytest.mark.parametrize(
    ("free", "pod", "expected"),
    [
        pytest.param([1000, 600, 1000], req(milli=500), (1,), id="a share: the GPU that strands least"),
        pytest.param([0, 1000, 1000], req(gpus=2), (1, 2), id="whole GPUs: the first fully free"),
    ],
)
def test_fgd_chooses_gpus(free: list[int], pod: PodRequest, expected: tuple[int, ...]) -> None:
    assert fgd([WHOLE]).choose_gpus(snap_of([free], [10_000]), pod, 0) == expected


@pytest.mark.parametrize(("args", "key"), [({"coverage": 0}, "coverage"), ({"scale": 1000}, "scale")])
def test_fgd_rejects_bad_args(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pluginArgs fgd\.{key}:"):
        single("fgd", **args)


@settings(max_examples=40, deadline=None)
@given(nodes=st.lists(node_st, min_size=1, max_size=6), pod=pods_st)
def test_fgd_scores_stay_within_0_and_100(nodes: list[tuple[list[int], int]], pod: PodRequest) -> None:
    snap = snap_of([f for f, _ in nodes], [c for _, c in nodes])
    fw = fgd([SHARE500, WHOLE, CPU_ONLY, TypicalPod(9000, 4, 1000, (), 2)])
    raw = np.asarray(fw.scores[0][0].score(Cycle(snap, pod, fw.config), np.arange(len(snap))))
    assert np.isfinite(raw).all()
    assert ((raw >= 0) & (raw <= 100)).all()
