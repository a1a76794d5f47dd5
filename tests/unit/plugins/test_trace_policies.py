"""The FGD paper's baseline policies, kube-scheduler's LeastAllocated and ImageLocality, resources-fit."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError
from scheduler.core.framework import Cycle, Framework
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState, PodRequest
from scheduler.plugins import registry
from scheduler.plugins.baselines.best_fit import int_minmax
from scheduler.plugins.baselines.gpu_clustering import request_class
from simulations import policies

GiB = 2**30


def trace_node(name: str, gpus: int = 8, cpu: int = 96_000, memory: int = 512 * GiB, **kw: Any) -> NodeState:
    return NodeState(
        name=name,
        gpu_count=gpus,
        cpu_milli=cpu,
        memory=memory,
        gpus=tuple(GpuInfo(i, "G2") for i in range(gpus)),
        report_age_s=0.0,
        **kw,
    )


def req(name: str = "p", gpus: int = 0, milli: int = 0, cpu: int = 1000, memory: int = 0, **kw: Any) -> PodRequest:
    return PodRequest("t", name, gpu_count=gpus, gpu_milli=milli, cpu_milli=cpu, memory=memory, **kw)


def snap_of(frees: Sequence[Sequence[int]], cpus: Sequence[int] | None = None) -> ClusterSnapshot:
    cpus = cpus or [96_000] * len(frees)
    snap = ClusterSnapshot([trace_node(f"n{i}", len(f), c) for i, (f, c) in enumerate(zip(frees, cpus, strict=True))])
    for i, free in enumerate(frees):
        snap.gpu_milli_free[i, : len(free)] = free
    return snap


def single(plugin: str, **args: Any) -> Framework:
    plugins = {"filter": ["gpu-fit", "resources-fit"], "score": [{"name": plugin, "weight": 1}]}
    data: dict[str, Any] = {"plugins": plugins}
    if args:
        data["pluginArgs"] = {plugin: args}
    return registry.build(registry.config_from(data))


def scores(fw: Framework, snap: ClusterSnapshot, pod: PodRequest) -> dict[int, float]:
    d = fw.decide(snap, pod)
    name = fw.scores[0][0].name
    return dict(zip(d.feasible.tolist(), d.scores[name].tolist(), strict=True))


# ---------------------------------------------------------------- best-fit
def test_int_minmax_is_integer_and_all_equal_is_zero() -> None:
    assert int_minmax(np.array([10, 20, 40])).tolist() == [0.0, 33.0, 100.0]
    assert int_minmax(np.array([7, 7])).tolist() == [0.0, 0.0]


def test_best_fit_prefers_the_node_left_fullest() -> None:
    # Free after placing 1 GPU and 4 CPUs: node 0 has 7 GPUs and 92 CPUs, node 1 has 1 GPU and 12 CPUs.
    snap = snap_of([[1000] * 8, [1000, 1000, 0, 0, 0, 0, 0, 0]], [96_000, 16_000])
    got = scores(single("best-fit"), snap, req(gpus=1, cpu=4000))
    # raw = int(100 * (1 - (0.5 * free_cpu / 128000 + 0.5 * free_gpu / 8000))): 20 and 89.
    assert got == {0: 0.0, 1: 100.0}
    assert single("best-fit").choose_gpus(snap, req(gpus=1, cpu=4000), 1) == (0,)


def test_best_fit_gives_a_share_the_gpu_with_least_free() -> None:
    snap = snap_of([[1000, 600, 300, 700]])
    assert single("best-fit").choose_gpus(snap, req(milli=300), 0) == (2,)
    assert single("best-fit").choose_gpus(snap, req(milli=650), 0) == (3,)


# ---------------------------------------------------------------- dot-product
def test_dot_product_prefers_the_free_vector_least_aligned_with_the_request() -> None:
    snap = snap_of([[1000] * 8, [1000, 1000, 0, 0, 0, 0, 0, 0]], [96_000, 16_000])
    got = scores(single("dot-product"), snap, req(gpus=1, cpu=8000))
    dot0 = (96_000 / 128_000 * 8_000 / 128_000 + 8000 / 8000 * 1000 / 8000) / 2
    dot1 = (16_000 / 128_000 * 8_000 / 128_000 + 2000 / 8000 * 1000 / 8000) / 2
    assert got == {0: float(int(100 * (1 - dot0))), 1: float(int(100 * (1 - dot1)))}
    assert got[1] > got[0]


# ---------------------------------------------------------------- gpu-packing
@pytest.mark.parametrize(
    ("case", "free", "pod", "expected"),
    [
        ("idle 8-GPU node", [1000] * 8, req(gpus=1), 25),  # max(33 - 8, 8)
        ("idle 2-GPU node", [1000] * 2, req(gpus=1), 31),
        ("busy node, whole GPU", [1000, 1000, 0, 0], req(gpus=1), 49),
        ("busy node, two GPUs", [1000, 1000, 0, 0], req(gpus=2), 48),
        ("busy node, share on an idle GPU", [1000, 0], req(milli=500), 49),
        ("share on a used GPU", [600, 1000], req(milli=500), 94),  # 100 - (600 * 100 // 1000) // 10
        ("share on a nearly full GPU", [100, 1000], req(milli=50), 99),
    ],
)
def test_gpu_packing(case: str, free: list[int], pod: PodRequest, expected: int) -> None:
    assert scores(single("gpu-packing"), snap_of([free]), pod) == {0: float(expected)}, case


def test_gpu_packing_ignores_cpu_only_pods() -> None:
    assert scores(single("gpu-packing"), snap_of([[1000], [0]]), req(cpu=1000)) == {0: 0.0, 1: 0.0}


# ---------------------------------------------------------------- gpu-clustering
def test_request_classes() -> None:
    assert [request_class(p) for p in (req(milli=300), req(gpus=2), req())] == ["share", "2-gpu", ""]


def test_gpu_clustering_keeps_classes_together() -> None:
    snap = snap_of([[1000] * 8] * 4)
    snap.place(req("a", gpus=1), 0, (0,))  # node 0 runs only 1-GPU pods
    snap.place(req("b", gpus=1), 1, (0,))
    snap.place(req("c", milli=300), 1, (1,))  # node 1 runs 1-GPU and share pods
    snap.place(req("d", milli=300), 2, (0,))  # node 2 only shares; node 3 nothing
    got = scores(single("gpu-clustering"), snap, req("x", gpus=1))
    # base = 25 * used milli-GPU // 8000: 3, 4, 0, 0
    assert got == {0: 3 + 75.0, 1: 4 + 50.0, 2: 0 + 0.0, 3: 0 + 25.0}
    snap.remove("t/a")  # node 0 idles again: counted afresh
    assert scores(single("gpu-clustering"), snap, req("x", gpus=1))[0] == 25.0


# ---------------------------------------------------------------- random
def test_random_is_reproducible_and_picks_one_node() -> None:
    snap = snap_of([[1000] * 2] * 10)
    picks = []
    for _ in range(2):
        fw = single("random", seed=7)
        picks.append([fw.decide(snap, req(gpus=1)).best() for _ in range(20)])
    assert picks[0] == picks[1] and len(set(picks[0])) > 3
    d = single("random", seed=7).decide(snap, req(gpus=1))
    assert sorted(d.scores["random"].tolist()) == [0.0] * 9 + [100.0]


def test_random_gives_a_share_a_fitting_gpu() -> None:
    snap = snap_of([[1000, 100, 600, 50]])
    fw = single("random", seed=1)
    assert {fw.choose_gpus(snap, req(milli=500), 0)[0] for _ in range(30)} == {0, 2}


def test_random_rejects_a_bad_seed() -> None:
    with pytest.raises(ConfigError):
        single("random", seed="x")


# ---------------------------------------------------------------- least-allocated (kube-scheduler)
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


# ---------------------------------------------------------------- image-locality (kube-scheduler)
def test_image_locality_is_kube_schedulers_formula() -> None:
    mb = 1024 * 1024
    image = "ghcr.io/acme/server:1"
    nodes = [
        trace_node("a", images={image: 600 * mb}),
        trace_node("b", images={image: 600 * mb}),
        trace_node("c"),
        trace_node("d"),
    ]
    got = scores(single("image-locality"), ClusterSnapshot(nodes), req(images=(image,)))
    # spread 2/4: int(600 MiB * 0.5) = 300 MiB -> 100 * (300 - 23) // (1000 - 23) = 28
    assert got == {0: 28.0, 1: 28.0, 2: 0.0, 3: 0.0}


# ---------------------------------------------------------------- resources-fit
def test_resources_fit_filters_cpu_and_memory_with_reasons() -> None:
    snap = ClusterSnapshot([trace_node("a", cpu=2000, memory=GiB), trace_node("b", cpu=8000, memory=64 * GiB)])
    d = single("best-fit").decide(snap, req(cpu=4000, memory=2 * GiB))
    assert d.feasible.tolist() == [1]
    assert d.reasons[0] == "needs 4 CPU, 2 free"
    d = single("best-fit").decide(snap, req(cpu=1000, memory=2 * GiB))
    assert d.reasons[0] == "needs 2.0GiB memory, 1.0GiB free"


# ---------------------------------------------------------------- properties over every trace policy
frees_st = st.lists(
    st.lists(st.sampled_from([0, 100, 300, 500, 800, 1000]), min_size=1, max_size=8), min_size=1, max_size=6
)
pod_st = st.one_of(
    st.builds(lambda m, c: req("x", milli=m, cpu=c), st.integers(1, 999), st.integers(0, 32_000)),
    st.builds(lambda g, c: req("x", gpus=g, cpu=c), st.integers(1, 8), st.integers(0, 32_000)),
    st.builds(lambda c: req("x", cpu=c), st.integers(0, 32_000)),
)


@settings(max_examples=30, deadline=None)
@given(frees=frees_st, pod=pod_st)
def test_every_policy_scores_within_0_and_100(frees: list[list[int]], pod: PodRequest) -> None:
    snap = snap_of(frees, [64_000] * len(frees))
    for name in policies.POLICIES:
        fw = registry.build(registry.config_from(policies.policy_config(name)))
        cycle = Cycle(snap, pod, fw.config)
        for plugin, _ in fw.scores:
            raw = np.asarray(plugin.score(cycle, np.arange(len(snap))), dtype=float)
            assert ((raw >= 0) & (raw <= 100)).all(), (name, plugin.name)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=5),
       pods=st.lists(pod_st, min_size=1, max_size=40))  # fmt: skip
def test_a_replay_never_over_commits(sizes: list[int], pods: list[PodRequest]) -> None:
    for name in policies.TRACE_POLICIES:
        snap = ClusterSnapshot([trace_node(f"n{i}", g, 32_000) for i, g in enumerate(sizes)])
        fw = registry.build(registry.config_from(policies.policy_config(name, seed=3)))
        for i, pod in enumerate(pods):
            pod = PodRequest(pod.namespace, f"p{i}", gpu_count=pod.gpu_count, gpu_milli=pod.gpu_milli,
                             cpu_milli=pod.cpu_milli)  # fmt: skip
            best = fw.decide(snap, pod, explain=False).best()
            if best is not None:
                gpus = fw.choose_gpus(snap, pod, best)
                assert len(gpus) == pod.gpus_needed, name
                snap.place(pod, best, gpus)
        assert snap.over_committed() == [], name
        assert (snap.cpu_free >= 0).all(), name
