from collections.abc import Sequence
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
    TypicalPodsArgs,
    shape_of,
    typical_pods,
)
from scheduler.core.framework import Cycle, Framework
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState, PodRequest
from scheduler.plugins import registry
from simulations.policies import typical_args


def trace_node(name: str, gpus: int = 8, cpu: int = 96_000, model: str = "G2") -> NodeState:
    return NodeState(
        name=name,
        gpu_count=gpus,
        cpu_milli=cpu,
        memory=1 << 40,
        gpus=tuple(GpuInfo(i, model) for i in range(gpus)),
        report_age_s=0.0,
    )


def req(name: str, gpus: int = 0, milli: int = 0, cpu: int = 1000, models: tuple[str, ...] = ()) -> PodRequest:
    return PodRequest("t", name, gpu_count=gpus, gpu_milli=milli, cpu_milli=cpu, gpu_models=models)


def snapshot_with(frees: Sequence[Sequence[int]], cpus: Sequence[int], model: str = "G2") -> ClusterSnapshot:
    pairs = enumerate(zip(frees, cpus, strict=True))
    snap = ClusterSnapshot([trace_node(f"n{i}", len(f), c, model) for i, (f, c) in pairs])
    for i, free in enumerate(frees):
        snap.gpu_milli_free[i, : len(free)] = free
    return snap


def framework(plugin: str, typical: Sequence[TypicalPod], **args: Any) -> Framework:
    config = registry.config_from(
        {
            "plugins": {"filter": ["gpu-fit", "resources-fit"], "score": [{"name": plugin, "weight": 1}]},
            "pluginArgs": {plugin: {"typicalPods": typical_args(typical), **args}},
        }
    )
    return registry.build(config)


SHARE500 = TypicalPod(1000, 1, 500, (), 1)
WHOLE = TypicalPod(1000, 1, 1000, (), 1)
CPU_ONLY = TypicalPod(1000, 0, 0, (), 2)


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


# ---------------------------------------------------------------- deltas agree with a fresh measure
pods_st = st.one_of(
    st.builds(
        lambda m, c: req("x", milli=m, cpu=c), st.sampled_from([110, 250, 470, 500, 810]), st.integers(0, 16_000)
    ),
    st.builds(lambda g, c: req("x", gpus=g, cpu=c), st.sampled_from([1, 2, 4]), st.integers(0, 16_000)),
    st.builds(lambda c: req("x", cpu=c), st.integers(1, 16_000)),
)
node_st = st.tuples(st.lists(st.sampled_from([0, 190, 300, 530, 1000]), min_size=1, max_size=8), st.integers(0, 96_000))


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
    pos, gpu, delta = state.deltas(cycle, everywhere, every_gpu=True)
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


# ---------------------------------------------------------------- scores
def test_fgd_scores_the_sigmoid_of_the_delta_as_an_integer() -> None:
    # Two 2-GPU nodes; node 1 has a share taken. A 500 share on node 1's half-used GPU removes its
    # fragment; on node 0 it breaks a whole GPU.
    snap = snapshot_with([[1000, 1000], [1000, 500]], [10_000, 10_000])
    fw = framework("fgd", [WHOLE])
    d = fw.decide(snap, req("s", milli=500))
    scores = dict(zip(d.feasible.tolist(), d.scores["fgd"].tolist(), strict=True))
    # node 0: frag 0 -> 500 (the share left on GPU 0), delta -500; node 1: 500 -> 0, delta +500.
    assert scores == {0: float(int(100 / (1 + np.exp(0.5)))), 1: float(int(100 / (1 + np.exp(-0.5))))}
    assert d.best() == 1
    assert fw.choose_gpus(snap, req("s", milli=500), 1) == (1,)


def test_fgd_ties_go_to_the_first_node() -> None:
    snap = snapshot_with([[1000, 1000]] * 3, [10_000] * 3)
    fw = framework("fgd", [WHOLE])
    d = fw.decide(snap, req("w", gpus=1))
    assert len(set(d.scores["fgd"].tolist())) == 1 and d.best() == 0
    assert fw.choose_gpus(snap, req("w", gpus=1), 0) == (0,)


def test_fragmentation_prefers_the_placement_that_strands_least() -> None:
    # An 810 share: node 0 has a GPU with exactly 810 free, node 1 only whole GPUs.
    snap = snapshot_with([[810, 1000], [1000, 1000]], [10_000, 10_000])
    fw = framework("fragmentation", [TypicalPod(1000, 1, 810, (), 1)], packDelta=0)
    d = fw.decide(snap, req("s", milli=810))
    assert d.best() == 0
    assert fw.choose_gpus(snap, req("s", milli=810), 0) == (0,)


def test_fragmentation_first_fit_breaks_near_ties_only() -> None:
    snap = snapshot_with([[1000] * 4] * 3, [64_000] * 3)
    fw = framework("fragmentation", [WHOLE])
    d = fw.decide(snap, req("w", gpus=1))
    assert d.best() == 0 and list(np.argsort(-d.scores["fragmentation"], kind="stable")) == [0, 1, 2]
    # Without first fit every node scores the same (nothing is stranded anywhere).
    flat = framework("fragmentation", [WHOLE], packDelta=0).decide(snap, req("w", gpus=1))
    assert len(set(flat.scores["fragmentation"].tolist())) == 1


def test_fragmentation_gives_a_share_the_tightest_of_equally_good_gpus() -> None:
    snap = snapshot_with([[1000, 700, 400, 900]], [64_000])
    fw = framework("fragmentation", [CPU_ONLY])  # every GPU is equally good for the measure
    assert fw.choose_gpus(snap, req("s", milli=300), 0) == (2,)


def test_fragmentation_without_typical_pods_uses_the_running_ones() -> None:
    snap = snapshot_with([[1000, 1000], [1000, 1000]], [10_000, 10_000])
    snap.place(req("r", milli=810), 0, (0,))
    config = registry.config_from({"plugins": {"score": [{"name": "fragmentation", "weight": 1}]}})
    plugin = registry.build(config).scores[0][0]
    state = plugin.source.state(snap)  # type: ignore[attr-defined]
    assert [p.shape for p in state.pods] == [(1000, 1, 810, ())]


@pytest.mark.parametrize("args", [{"scale": 0}, {"packDelta": -1}, {"coverage": 0}, {"coverage": "x"}])
def test_fragmentation_rejects_bad_args(args: dict[str, Any]) -> None:
    data = {"plugins": {"score": [{"name": "fragmentation", "weight": 1}]}, "pluginArgs": {"fragmentation": args}}
    with pytest.raises(ConfigError, match=f"pluginArgs fragmentation.{next(iter(args))}"):
        registry.config_from(data)


@settings(max_examples=40, deadline=None)
@given(nodes=st.lists(node_st, min_size=1, max_size=6), pod=pods_st)
def test_scores_stay_within_0_and_100(nodes: list[tuple[list[int], int]], pod: PodRequest) -> None:
    snap = snapshot_with([f for f, _ in nodes], [c for _, c in nodes])
    typical = [SHARE500, WHOLE, CPU_ONLY, TypicalPod(9000, 4, 1000, (), 2)]
    for plugin in ("fgd", "fragmentation"):
        fw = framework(plugin, typical)
        raw = fw.scores[0][0].score(Cycle(snap, pod, fw.config), np.arange(len(snap)))
        assert ((raw >= 0) & (raw <= 100)).all()
