"""fragmentation (score): place the pod where it destroys the least GPU the next pods could use.

The measure it scores (typical pods, the multi-copy measure, deltas) is tested in
tests/unit/core/test_fragmentation.py; the fgd baseline in tests/unit/plugins/baselines/test_fgd.py.
"""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError
from scheduler.core.fragmentation import TypicalPod
from scheduler.core.framework import Cycle
from scheduler.core.types import PodRequest
from scheduler.plugins import registry
from scheduler.plugins.fragmentation import Fragmentation
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


def test_fragmentation_without_any_gpu_pod_takes_one_whole_gpu_as_typical() -> None:
    snap = snapshot_with([[1000, 1000]], [10_000])
    snap.place(req("cpu", cpu=2000), 0)
    plugin = Fragmentation.create(None, None)
    assert [p.shape for p in plugin.source.state(snap).pods] == [(2000, 0, 0, ()), (0, 1, 1000, ())]


# raw = 50 + 50 * clip(delta / scale, -1, 1), delta = frag before - after (milli-GPU);
# order = 50 * packDelta / scale * (1 - rank / nodes); score = 100 * (raw + order) / (100 + 50 * packDelta / scale).
# Two nodes: n0 [1000, 1000], n1 [1000, 500]; typical: one whole GPU; the pod: a 500 share.
# Multi-copy: n0: frag 0 -> best GPU [500, 1000]: 1500 - 1000 = 500, delta -500; n1: 1500 - 1000 = 500 -> [1000, 0]: 0,
# delta +500. FGD's: n0 0 -> 500 (the 500 left on GPU 0 is too small), delta -500; n1 500 -> 0, delta +500. Their mean
# (measure "both", the default) is the same.
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param({"packDelta": 0, "scale": 1000}, [25.0, 75.0], id="no first fit"),  # 50 + 50*(-0.5), 50 + 50*0.5
        pytest.param(
            {},
            # defaults: scale 8000, packDelta 400: raw 50 - 50*500/8000 = 46.875 and 53.125; order span
            # 50*400/8000 = 2.5, ranks 0 and 1 of 2: 100 * (46.875 + 2.5) / 102.5 = 48.17,
            # 100 * (53.125 + 2.5*(1 - 1/2)) / 102.5 = 53.05
            [100 * 49.375 / 102.5, 100 * 54.375 / 102.5],
            id="defaults",
        ),
        pytest.param(
            {"scale": 1000, "packDelta": 240},
            # order span 50*240/1000 = 12, ranks 0 and 1 of 2:
            # 100 * (25 + 12*(1 - 0/2)) / 112 = 33.04, 100 * (75 + 12*(1 - 1/2)) / 112 = 72.32
            [100 * 37 / 112, 100 * 81 / 112],
            id="first fit at scale 1000",
        ),
        pytest.param(
            {"packDelta": 0, "scale": 250}, [0.0, 100.0], id="scale 250 clips"
        ),  # clip(-500/250) = -1 -> 0, clip(500/250) = 1 -> 100
        pytest.param(
            {"packDelta": 1000, "scale": 1000},
            # order span 50: 100 * (25 + 50*(1 - 0/2)) / 150 = 50, 100 * (75 + 50*(1 - 1/2)) / 150 = 66.67
            [50.0, 100 * 100 / 150],
            id="a wide first-fit band",
        ),
    ],
)
def test_fragmentation_scores(args: dict[str, Any], expected: list[float]) -> None:
    snap = snapshot_with([[1000, 1000], [1000, 500]], [10_000, 10_000])
    plugin = Fragmentation.create({"typicalPods": typical_args([WHOLE]), **args}, None)
    got = plugin.score(Cycle(snap, req("s", milli=500), plugin.config), np.arange(2))
    assert got.tolist() == pytest.approx(expected)


def test_fragmentation_scores_a_cpu_only_pod_by_the_cpu_it_takes() -> None:
    # typical: 8 CPUs + 1 GPU. 3 free GPUs and 10 CPUs: min(3, 10000 // 8000) = 1 copy, frag 3000 - 1000 = 2000;
    # a 4-CPU pod leaves 6 CPUs: 0 copies, frag 3000, delta -1000: 50 + 50*(-1000/1000) = 0
    snap = snapshot_with([[1000] * 3], [10_000])
    typical = typical_args([TypicalPod(8000, 1, 1000, (), 1)])
    args = {"typicalPods": typical, "packDelta": 0, "scale": 1000, "measure": "multi-copy"}
    plugin = Fragmentation.create(args)
    assert plugin.score(Cycle(snap, req("c", cpu=4000), plugin.config), np.arange(1)).tolist() == [0.0]


# One node of 8 free GPUs, typical: a 4-GPU pod (no CPU); the pod takes 1 GPU, leaving 7.
# Multi-copy: 2 copies -> 1 copy (3 GPUs left over), frag 0 -> 3000, delta -3000: 50 - 50*3000/8000 = 31.25.
# FGD's: one 4-GPU pod fits before and after, no partly used GPU: frag 0 -> 0, delta 0: 50.
# Both (default): delta (-3000 + 0) / 2 = -1500: 50 - 50*1500/8000 = 40.625.
@pytest.mark.parametrize(("measure", "expected"), [("multi-copy", 31.25), ("fgd", 50.0), ("both", 40.625)])
def test_fragmentation_measures(measure: str, expected: float) -> None:
    snap = snapshot_with([[1000] * 8], [96_000])
    typical = typical_args([TypicalPod(0, 4, 1000, (), 1)])
    plugin = Fragmentation.create({"typicalPods": typical, "packDelta": 0, "measure": measure})
    assert plugin.score(Cycle(snap, req("w", gpus=1), plugin.config), np.arange(1)).tolist() == [expected]


@pytest.mark.parametrize(
    "args", [{"scale": 0}, {"packDelta": -1}, {"coverage": 0}, {"coverage": "x"}, {"measure": "median"}]
)
def test_fragmentation_rejects_bad_args(args: dict[str, Any]) -> None:
    data = {"plugins": {"score": [{"name": "fragmentation", "weight": 1}]}, "pluginArgs": {"fragmentation": args}}
    with pytest.raises(ConfigError, match=f"pluginArgs fragmentation.{next(iter(args))}"):
        registry.config_from(data)


@settings(max_examples=40, deadline=None)
@given(nodes=st.lists(node_st, min_size=1, max_size=6), pod=pods_st)
def test_scores_stay_within_0_and_100(nodes: list[tuple[list[int], int]], pod: PodRequest) -> None:
    snap = snapshot_with([f for f, _ in nodes], [c for _, c in nodes])
    typical = [SHARE500, WHOLE, CPU_ONLY, TypicalPod(9000, 4, 1000, (), 2)]
    fw = framework("fragmentation", typical)
    raw = np.asarray(fw.scores[0][0].score(Cycle(snap, pod, fw.config), np.arange(len(snap))))
    assert np.isfinite(raw).all()
    assert ((raw >= 0) & (raw <= 100)).all()


@settings(max_examples=40, deadline=None)
@given(
    nodes=st.lists(node_st, min_size=2, max_size=5),
    pods=st.lists(
        st.tuples(st.sampled_from([(0, 0), (1, 0), (2, 0), (0, 250), (0, 500)]), st.sampled_from([0, 1000, 4000])),
        min_size=2,
        max_size=10,
    ),
    measure=st.sampled_from(["both", "multi-copy", "fgd"]),
)
def test_kept_scores_and_gpus_equal_a_fresh_plugins_after_every_placement(
    nodes: list[tuple[list[int], int]], pods: list[tuple[tuple[int, int], int]], measure: str
) -> None:
    """The plugin keeps each shape's scores and GPUs per node and computes again only the nodes
    that changed; after every placement they equal, exactly, those of a plugin built afresh."""
    snap = snapshot_with([f for f, _ in nodes], [c for _, c in nodes])
    typical = [SHARE500, WHOLE, CPU_ONLY, TypicalPod(4000, 2, 1000, (), 1)]
    kept = framework("fragmentation", typical, measure=measure)
    everywhere = np.arange(len(snap))
    for n, ((gpus, milli), cpu) in enumerate(pods):
        pod = req(f"p{n}", gpus=gpus, milli=milli, cpu=cpu)
        fresh = framework("fragmentation", typical, measure=measure)
        want = fresh.scores[0][0].score(Cycle(snap, pod, fresh.config), everywhere).tolist()
        assert kept.scores[0][0].score(Cycle(snap, pod, kept.config), everywhere).tolist() == want
        assert [kept.choose_gpus(snap, pod, i) for i in range(len(snap))] == [
            fresh.choose_gpus(snap, pod, i) for i in range(len(snap))
        ]
        kept.place_best(snap, pod)  # the next pod sees this one placed (when it fit)
