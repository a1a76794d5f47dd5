"""Properties of every trace policy of the simulator at once (simulations/policies.py)."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins import registry
from simulations import policies
from tests.unit.plugins.baselines.helpers import req, snap_of, trace_node

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
@example(frees=[[0]], pod=req("x", gpus=7, cpu=0))  # 7 GPUs on a 1-GPU node: a count below zero
def test_every_policy_scores_within_0_and_100(frees: list[list[int]], pod: PodRequest) -> None:
    snap = snap_of(frees, [64_000] * len(frees))
    for name in policies.POLICIES:
        fw = registry.build(registry.config_from(policies.policy_config(name)))
        cycle = Cycle(snap, pod, fw.config)
        for plugin, _ in fw.scores:
            raw = np.asarray(plugin.score(cycle, np.arange(len(snap))), dtype=float)
            assert ((raw >= 0) & (raw <= 100)).all(), (name, plugin.name)


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=5),
    pods=st.lists(pod_st, min_size=1, max_size=40),
)
def test_a_replay_never_over_commits(sizes: list[int], pods: list[PodRequest]) -> None:
    for name in policies.TRACE_POLICIES:
        snap = ClusterSnapshot([trace_node(f"n{i}", g, 32_000) for i, g in enumerate(sizes)])
        fw = registry.build(registry.config_from(policies.policy_config(name, seed=3)))
        for i, pod in enumerate(pods):
            pod = PodRequest(
                pod.namespace, f"p{i}", gpu_count=pod.gpu_count, gpu_milli=pod.gpu_milli, cpu_milli=pod.cpu_milli
            )
            best = fw.decide(snap, pod, explain=False).best()
            if best is not None:
                gpus = fw.choose_gpus(snap, pod, best)
                assert len(gpus) == pod.gpus_needed, name
                snap.place(pod, best, gpus)
        assert snap.over_committed() == [], name
        assert (snap.cpu_free >= 0).all(), name
