"""Trace-style nodes and pods for the baseline plugins' tests (the FGD paper's cluster: GPUs of one
model, free shares set directly), and calls that score a plugin directly over the nodes that pass
the trace filters (gpu-fit, resources-fit), as the simulator's policies run them."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from scheduler.core.framework import Cycle, Framework, ScorePlugin
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState, PodRequest
from scheduler.plugins import registry
from tests.builders import GiB

__all__ = ["GiB", "feasible", "req", "scores", "single", "snap_of", "trace_node"]


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
    """One trace node per entry of `frees`, its GPUs' free milli-GPU set as given."""
    cpus = cpus or [96_000] * len(frees)
    snap = ClusterSnapshot([trace_node(f"n{i}", len(f), c) for i, (f, c) in enumerate(zip(frees, cpus, strict=True))])
    for i, free in enumerate(frees):
        snap.gpu_milli_free[i, : len(free)] = free
    return snap


def single(plugin: str, **args: Any) -> Framework:
    """The trace filters and one score plugin, built by the registry from a config."""
    plugins = {"filter": ["gpu-fit", "resources-fit"], "score": [{"name": plugin, "weight": 1}]}
    data: dict[str, Any] = {"plugins": plugins}
    if args:
        data["pluginArgs"] = {plugin: args}
    return registry.build(registry.config_from(data))


def feasible(fw: Framework, cycle: Cycle) -> np.ndarray:
    """The nodes that pass every filter of `fw`, each filter called directly."""
    nodes = np.arange(len(cycle.snapshot), dtype=np.intp)
    for plugin in fw.filters:
        nodes = nodes[np.asarray(plugin.filter(cycle, nodes), dtype=bool)]
    return nodes


def scores(fw: Framework, snap: ClusterSnapshot, pod: PodRequest) -> dict[int, float]:
    """Node -> the raw score of fw's (only) score plugin, over the feasible nodes, unclipped."""
    plugin: ScorePlugin = fw.scores[0][0]
    cycle = Cycle(snap, pod, fw.config)
    nodes = feasible(fw, cycle)
    raw = np.asarray(plugin.score(cycle, nodes), dtype=np.float64)
    return dict(zip(nodes.tolist(), raw.tolist(), strict=True))
