"""Static per-node arrays (scheduler/core/node_table.py)."""

from scheduler.core.node_table import MIXED_MODELS, NodeTable
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState

GiB = 2**30


def node(name: str, gpus: list[tuple[str, int, bool]]) -> NodeState:
    """A node whose GPUs are (model, memory GiB, healthy)."""
    infos = tuple(GpuInfo(i, m, g * GiB, healthy=h) for i, (m, g, h) in enumerate(gpus))
    return NodeState(name, gpu_count=len(gpus), cpu_milli=8000, gpus=infos, report_age_s=0.0)


def test_models_memory_and_first_fit_order_per_node() -> None:
    table = NodeTable.of(
        ClusterSnapshot(
            [
                node("a", [("A100", 80, True)] * 2),
                node("b", [("A100", 40, True), ("A100", 80, True)]),  # two sizes
                node("c", [("L4", 24, True), ("H100", 80, False)]),  # the unhealthy 80 GiB does not count
                node("d", [("L4", 24, False)]),  # no usable GPU
                node("e", [("L4", 24, True), ("T4", 16, True)]),
            ]
        )
    )
    assert table.gpus.tolist() == [2, 2, 1, 0, 2]
    assert (table.gpu_memory_top // GiB).tolist() == [80, 80, 24, -1, 24]  # -1 (floored): no usable GPU
    assert table.one_gpu_memory.tolist() == [True, False, True, False, False]
    assert table.node_model[4] == MIXED_MODELS and table.node_model[0] != MIXED_MODELS
    # Smallest largest-GPU first, then snapshot order: d (0), c and e (24 GiB), a and b (80 GiB).
    assert table.fill_rank.tolist() == [3, 4, 1, 0, 2]
