"""gpu-packing (score): partly used GPUs first, then idle GPUs of busy nodes, then idle nodes."""

import pytest

from scheduler.core.types import PodRequest
from tests.unit.plugins.baselines.helpers import req, scores, single, snap_of


# idle node: max(33 - free GPUs, free GPUs); whole GPUs of a busy node: max(50 - GPUs taken, 33);
# a share on a partly used GPU: max(100 - (free * 100 // 1000) // 10, 50), free of the tightest fit.
@pytest.mark.parametrize(
    ("case", "free", "pod", "expected"),
    [
        ("idle 8-GPU node", [1000] * 8, req(gpus=1), 25),  # max(33 - 8, 8)
        ("idle 2-GPU node", [1000] * 2, req(gpus=1), 31),  # max(33 - 2, 2)
        ("busy node, whole GPU", [1000, 1000, 0, 0], req(gpus=1), 49),  # max(50 - 1, 33)
        ("busy node, two GPUs", [1000, 1000, 0, 0], req(gpus=2), 48),  # max(50 - 2, 33)
        ("busy node, share on an idle GPU", [1000, 0], req(milli=500), 49),  # only a free GPU fits: max(50 - 1, 33)
        ("share on a used GPU", [600, 1000], req(milli=500), 94),  # 100 - (600 * 100 // 1000) // 10
        ("share on a nearly full GPU", [100, 1000], req(milli=50), 99),  # 100 - (100 * 100 // 1000) // 10
        ("busy 16-GPU node, 12 GPUs", [1000] * 12 + [0] * 4, req(gpus=12), 38),  # max(50 - 12, 33)
        ("busy 17-GPU node, 16 GPUs", [1000] * 16 + [500], req(gpus=16), 34),  # max(50 - 16, 33)
        ("share: the tightest fit counts", [900, 550, 1000], req(milli=500), 95),  # 100 - (550 * 100 // 1000) // 10
        ("share: too small GPUs do not count", [300, 1000, 0], req(milli=500), 49),  # only GPU 1 fits: max(50 - 1, 33)
    ],
)
def test_gpu_packing(case: str, free: list[int], pod: PodRequest, expected: int) -> None:
    assert scores(single("gpu-packing"), snap_of([free]), pod) == {0: float(expected)}, case


def test_gpu_packing_ignores_cpu_only_pods() -> None:
    assert scores(single("gpu-packing"), snap_of([[1000], [0]]), req(cpu=1000)) == {0: 0.0, 1: 0.0}
