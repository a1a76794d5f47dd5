"""The fragmentation measure (scheduler/core/fragmentation.py): typical pods, FGD's and the
multi-copy measure, their incremental deltas. The plugins built on it are tested beside them
(tests/unit/plugins/test_fragmentation.py, tests/unit/plugins/baselines/test_fgd.py)."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.args import parse_args
from scheduler.core.config import ConfigError
from scheduler.core.fragmentation import (
    FragmentationState,
    TypicalPod,
    TypicalPodArg,
    TypicalPodsArgs,
    best_per_node,
    integer_weights,
    shape_of,
    typical_pods,
)
from scheduler.core.framework import Cycle
from scheduler.core.types import PodRequest
from simulations.policies import typical_args
from tests.unit.fragmentation_cases import (
    CPU_ONLY,
    SHARE500,
    WHOLE,
    framework,
    node_st,
    pods_st,
    req,
    snapshot_with,
)


# ---------------------------------------------------------------- typical pods
def test_typical_pods_take_the_most_popular_shapes_until_coverage() -> None:
    shapes = [(1000, 1, 1000, ())] * 6 + [(2000, 1, 500, ())] * 3 + [(500, 0, 0, ())]
    chosen = typical_pods(shapes, 0.85)
    assert [(p.shape, p.weight) for p in chosen] == [((1000, 1, 1000, ()), 6.0), ((2000, 1, 500, ()), 3.0)]
    assert len(typical_pods(shapes, 1.0)) == 3
    assert typical_pods([], 0.95) == ()


def test_equal_counts_rank_larger_cpu_first() -> None:
    chosen = typical_pods([(1000, 1, 1000, ()), (4000, 1, 1000, ())], 0.5)
    assert [p.cpu_milli for p in chosen] == [4000]


def test_shape_of_a_share_and_of_a_cpu_only_pod() -> None:
    assert shape_of(req("a", milli=300, cpu=2000, models=("T4", "P100"))) == (2000, 1, 300, ("P100", "T4"))
    assert shape_of(req("b", cpu=500)) == (500, 0, 0, ())
    assert shape_of(req("c", gpus=8)) == (1000, 8, 1000, ())


@pytest.mark.parametrize(
    "raw",
    [
        "not a list",
        [{"gpus": -1}],
        [{"gpus": 2, "gpuMilli": 500}],
        [{"gpus": 1, "weight": 0}],
        [{"gpus": 1, "gpuMilli": 1200}],
        [3],
    ],
)
def test_malformed_typical_pods_are_config_errors(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"pluginArgs fgd\.typicalPods"):
        parse_args("fgd", TypicalPodsArgs, {"typicalPods": raw})


def test_typical_pods_arg_round_trips() -> None:
    pods = (TypicalPod(8000, 1, 470, ("T4",), 12), TypicalPod(0, 8, 1000, (), 3))
    args = parse_args("fgd", TypicalPodsArgs, {"typicalPods": typical_args(pods)})
    assert args.source(copies=False).fixed == pods


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"gpus": 2}, TypicalPod(0, 2, 1000), id="whole GPUs by default"),
        pytest.param({"cpu": 4000, "gpus": 1, "gpuMilli": 250}, TypicalPod(4000, 1, 250), id="a share"),
        pytest.param({"cpu": 4000}, TypicalPod(4000, 0, 0), id="no GPUs: cpu only"),
        pytest.param({"cpu": 4000, "gpuMilli": 500}, TypicalPod(4000, 0, 0), id="a share of no GPU is cpu only"),
        pytest.param({"gpus": 1, "gpuMilli": 0}, TypicalPod(0, 0, 0), id="gpuMilli 0 is cpu only"),
        pytest.param(
            {"gpus": 1, "models": ["T4", "P100"], "weight": 2.5},
            TypicalPod(0, 1, 1000, ("P100", "T4"), 2.5),
            id="models sorted, weight kept",
        ),
    ],
)
def test_typical_pod_arg(raw: dict[str, Any], expected: TypicalPod) -> None:
    args = parse_args("fragmentation", TypicalPodsArgs, {"typicalPods": [raw]})
    assert args.typical_pods is not None and args.typical_pods[0].typical() == expected
    assert isinstance(args.typical_pods[0], TypicalPodArg)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param([6.0, 3.0], [6, 3], id="counts stay as they are"),
        # scale = 1000000 / (0.5 + 1.5) = 500000: rint(0.5 * 500000) = 250000, rint(1.5 * 500000) = 750000
        pytest.param([0.5, 1.5], [250_000, 750_000], id="fractions scale to a million"),
        # scale = 1000000 / 1000000.000001: rint(0.000001 * ~1) = 0 -> at least 1
        pytest.param([1e6, 1e-6], [1_000_000, 1], id="a weight never rounds to 0"),
    ],
)
def test_integer_weights(weights: list[float], expected: list[int]) -> None:
    pods = [TypicalPod(0, 1, 1000, (), w) for w in weights]
    assert integer_weights(pods).tolist() == expected


# ---------------------------------------------------------------- the two measures
@pytest.mark.parametrize(
    ("case", "free", "cpu", "typical", "fgd_milli", "copies_milli"),
    [
        # share 500 fits: FGD counts the 300 left on GPU 1; copies: 2 slots on GPU 0 take 1000 of 1300.
        ("share fits", [1000, 300], 10_000, [SHARE500], 300, 300),
        # a whole GPU fits: the 300 cannot take one (both measures).
        ("whole fits", [1000, 300], 10_000, [WHOLE], 300, 300),
        # CPU-only typical pods leave every free milli-GPU idle.
        ("cpu only", [1000, 300], 10_000, [CPU_ONLY], 1300, 1300),
        ("mixed", [1000, 300], 10_000, [SHARE500, WHOLE, CPU_ONLY], 800, 800),
        # 810-milli shares on two free GPUs: FGD sees nothing lost, copies strand 2 x 190.
        ("810 strands 190", [1000, 1000], 10_000, [TypicalPod(1000, 1, 810, (), 1)], 0, 380),
        # 3 free GPUs but CPU for one 8-CPU pod: FGD says it fits, copies count two GPUs lost.
        ("cpu bound", [1000, 1000, 1000], 10_000, [TypicalPod(8000, 1, 1000, (), 1)], 0, 2000),
        # no CPU for even one: everything is fragment in both.
        ("no cpu", [1000, 1000], 500, [WHOLE], 2000, 2000),
        # a 2-GPU typical pod on 3 free GPUs: one copy, the third GPU is left over.
        ("two gpus", [1000, 1000, 1000], 10_000, [TypicalPod(1000, 2, 1000, (), 1)], 0, 1000),
    ],
)
def test_measures(
    case: str, free: list[int], cpu: int, typical: list[TypicalPod], fgd_milli: float, copies_milli: float
) -> None:
    snap = snapshot_with([free], [cpu])
    nodes = np.array([0])
    assert FragmentationState(snap, typical).milli(nodes)[0] == pytest.approx(fgd_milli), case
    assert FragmentationState(snap, typical, copies=True).milli(nodes)[0] == pytest.approx(copies_milli), case


def test_gpu_models_of_a_typical_pod() -> None:
    t4_only = TypicalPod(1000, 1, 1000, ("T4",), 1)
    g2 = snapshot_with([[1000, 1000]], [10_000], model="G2")
    t4 = snapshot_with([[1000, 1000]], [10_000], model="T4")
    assert FragmentationState(g2, [t4_only]).milli(np.array([0]))[0] == 2000  # no GPU it may use
    assert FragmentationState(t4, [t4_only]).milli(np.array([0]))[0] == 0


def test_refresh_follows_placements_and_removals() -> None:
    snap = snapshot_with([[1000] * 8, [1000] * 8], [96_000, 96_000])
    state = FragmentationState(snap, [WHOLE, SHARE500], copies=True)
    before = state.milli(np.arange(2)).copy()
    snap.place(req("p", milli=300), 1, (2,))
    after = state.milli(np.arange(2))
    assert after[0] == before[0] and after[1] != before[1]
    snap.remove("t/p")
    assert state.milli(np.arange(2)).tolist() == before.tolist()


# ---------------------------------------------------------------- best_per_node
@pytest.mark.parametrize(
    ("pos", "gpu", "values", "n", "free", "expected"),
    [
        pytest.param(
            [0, 1, 2], [0, 1, 0], [5.0, 7.0, 1.0], 3, None, ([5.0, 7.0, 1.0], [0, 1, 0]), id="one row per node"
        ),
        pytest.param(
            [0, 0, 2, 2, 2],
            [0, 1, 0, 1, 2],
            [5.0, 9.0, 1.0, 3.0, 3.0],
            3,
            None,
            ([9.0, 0.0, 3.0], [1, -1, 1]),
            id="the max per node, the first GPU on ties; 0 and no GPU where a node has no row",
        ),
        pytest.param([], [], [], 2, None, ([0.0, 0.0], [-1, -1]), id="no rows at all"),
        pytest.param([], [], [], 0, None, ([], []), id="no nodes"),
        # Node 0: GPUs 0 and 2 within 1e-9 of the best (9.0 - 5e-10 and 9.0); GPU 2 has less free
        # (300 < 700): it wins although GPU 0's score is lower. Node 1: GPU 1's 8.0 is 1.0 behind.
        pytest.param(
            [0, 0, 0, 1, 1],
            [0, 1, 2, 0, 1],
            [9.0 - 5e-10, 4.0, 9.0, 9.0, 8.0],
            2,
            [[700, 100, 300], [900, 100, 0]],
            ([9.0, 9.0], [2, 0]),
            id="given free shares: the tightest GPU among those within 1e-9 of the best",
        ),
        pytest.param(
            [0, 0], [1, 2], [6.0, 6.0], 1, [[0, 500, 500]], ([6.0], [1]), id="equal free shares: the first GPU"
        ),
    ],
)
def test_best_per_node(
    pos: list[int],
    gpu: list[int],
    values: list[float],
    n: int,
    free: list[list[int]] | None,
    expected: tuple[list[float], list[int]],
) -> None:
    shares = None if free is None else np.array(free, dtype=np.int32)
    best, chosen = best_per_node(
        np.array(pos, dtype=np.intp), np.array(gpu, dtype=np.intp), np.array(values), n, 3, shares
    )
    assert (best.tolist(), chosen.tolist()) == expected


# ---------------------------------------------------------------- deltas agree with a fresh measure


@settings(max_examples=60, deadline=None)
@given(nodes=st.lists(node_st, min_size=1, max_size=5), pod=pods_st, copies=st.booleans())
def test_delta_equals_measure_before_minus_after(
    nodes: list[tuple[list[int], int]], pod: PodRequest, copies: bool
) -> None:
    typical = [SHARE500, WHOLE, CPU_ONLY, TypicalPod(4000, 2, 1000, (), 1), TypicalPod(2000, 1, 250, (), 3)]
    snap = snapshot_with([f for f, _ in nodes], [c for _, c in nodes])
    state = FragmentationState(snap, typical, copies)
    fw = framework("fgd", typical)
    cycle = Cycle(snap, pod, fw.config)
    everywhere = np.arange(len(snap))
    pos, gpu, delta = state.deltas(cycle, everywhere)
    feasible = set(fw.decide(snap, pod).feasible.tolist())
    for p, g, d in zip(pos.tolist(), gpu.tolist(), delta.tolist(), strict=True):
        if p not in feasible:
            continue
        before = state.milli(everywhere)[p]
        chosen = (g,) if g >= 0 else tuple(np.flatnonzero(cycle.eligible(everywhere)[p])[: pod.gpus_needed].tolist())
        snap.place(pod, p, chosen)
        fresh = FragmentationState(snap, typical, copies).milli(everywhere)[p]
        snap.remove(pod.key)
        assert d / state.w_all == pytest.approx(before - fresh, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    nodes=st.lists(node_st, min_size=2, max_size=5),
    pods=st.lists(
        st.tuples(st.sampled_from([(0, 0), (1, 0), (2, 0), (0, 250), (0, 500)]), st.sampled_from([0, 1000, 4000])),
        min_size=2,
        max_size=10,
    ),
    copies=st.booleans(),
)
def test_a_long_lived_state_follows_placements(
    nodes: list[tuple[list[int], int]], pods: list[tuple[tuple[int, int], int]], copies: bool
) -> None:
    """A long-lived state refreshes only the nodes that changed; after every placement (whole GPUs,
    shares, CPU only) its deltas equal those of a state built afresh."""
    typical = [SHARE500, WHOLE, CPU_ONLY, TypicalPod(4000, 2, 1000, (), 1), TypicalPod(2000, 1, 250, (), 3)]
    snap = snapshot_with([f for f, _ in nodes], [c for _, c in nodes])
    state = FragmentationState(snap, typical, copies)
    fw = framework("fgd", typical)
    everywhere = np.arange(len(snap))
    for n, ((gpus, milli), cpu) in enumerate(pods):
        pod = req(f"p{n}", gpus=gpus, milli=milli, cpu=cpu)
        cycle = Cycle(snap, pod, fw.config)
        cached = state.deltas(cycle, everywhere)
        fresh = FragmentationState(snap, typical, copies).deltas(cycle, everywhere)
        assert [a.tolist() for a in cached] == [b.tolist() for b in fresh]
        fw.place_best(snap, pod)  # the next pod sees this one placed (when it fit)
