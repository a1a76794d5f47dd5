"""Trace-style nodes, pods, typical pods and strategies shared by the tests of the fragmentation
measure (tests/unit/core/test_fragmentation.py) and of the plugins built on it
(tests/unit/plugins/test_fragmentation.py, tests/unit/plugins/baselines/test_fgd.py)."""

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from scheduler.core.fragmentation import TypicalPod
from scheduler.core.framework import Framework
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState, PodRequest
from scheduler.plugins import registry
from simulations.policies import typical_args

SHARE500 = TypicalPod(1000, 1, 500, (), 1)
WHOLE = TypicalPod(1000, 1, 1000, (), 1)
CPU_ONLY = TypicalPod(1000, 0, 0, (), 2)


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


# A pod (a share, whole GPUs, or CPU only) and a node (free share per GPU, free CPU) of a trace.
pods_st = st.one_of(
    st.builds(
        lambda m, c: req("x", milli=m, cpu=c), st.sampled_from([110, 250, 470, 500, 810]), st.integers(0, 16_000)
    ),
    st.builds(lambda g, c: req("x", gpus=g, cpu=c), st.sampled_from([1, 2, 4]), st.integers(0, 16_000)),
    st.builds(lambda c: req("x", cpu=c), st.integers(1, 16_000)),
)
node_st = st.tuples(st.lists(st.sampled_from([0, 190, 300, 530, 1000]), min_size=1, max_size=8), st.integers(0, 96_000))
