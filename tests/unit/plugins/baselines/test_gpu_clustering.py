"""gpu-clustering (score): keep pods of one GPU request class together (FGD paper's GpuClustering)."""

from typing import Any

import pytest

from scheduler.core.config import ConfigError
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.baselines.gpu_clustering import request_class
from tests.unit.plugins.baselines.helpers import req, scores, single, snap_of


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


def classes_cluster() -> ClusterSnapshot:
    """n0 only shares, n1 a share and a 2-GPU pod, n2 only 1-GPU pods, n3 idle, n4 an idle 4-GPU node."""
    snap = snap_of([[1000] * 8] * 4 + [[1000] * 4])
    snap.place(req("s1", milli=300), 0, (0,))
    snap.place(req("s2", milli=300), 0, (0,))  # n0: used 600
    snap.place(req("s3", milli=300), 1, (0,))
    snap.place(req("g2", gpus=2), 1, (1, 2))  # n1: used 300 + 2000 = 2300
    for i in range(3):
        snap.place(req(f"g1-{i}", gpus=1), 2, (i,))  # n2: used 3000
    return snap


# base = 25 * (maxGpu - free milli-GPU) // maxGpu; + 75 only this class, + 50 this class among others,
# + 25 no GPU pods, + 0 only other classes.
@pytest.mark.parametrize(
    ("pod", "args", "expected"),
    [
        pytest.param(
            req("x", milli=300),
            {},
            {
                0: 1 + 75.0,  # 25*600//8000 = 1, only shares
                1: 7 + 50.0,  # 25*2300//8000 = 7, shares among others
                2: 9 + 0.0,  # 25*3000//8000 = 9, only 1-GPU pods
                3: 0 + 25.0,  # 25*0//8000 = 0, no GPU pods
                4: 12 + 25.0,  # 25*(8000-4000)//8000 = 12: a 4-GPU node counts as half used; no GPU pods
            },
            id="a share",
        ),
        pytest.param(
            req("x", gpus=2),
            {},
            {0: 1 + 0.0, 1: 7 + 50.0, 2: 9 + 0.0, 3: 0 + 25.0, 4: 12 + 25.0},
            id="two GPUs",
        ),
        pytest.param(
            req("x", gpus=1),
            {"maxGpu": 16_000},
            # 25*(16000-7400)//16000 = 13, 25*(16000-5700)//16000 = 16, 25*(16000-5000)//16000 = 17,
            # 25*(16000-8000)//16000 = 12, 25*(16000-4000)//16000 = 18
            {0: 13 + 0.0, 1: 16 + 0.0, 2: 17 + 75.0, 3: 12 + 25.0, 4: 18 + 25.0},
            id="maxGpu 16000",
        ),
        pytest.param(req("x", cpu=4000), {}, {i: 0.0 for i in range(5)}, id="a cpu-only pod has no class"),
    ],
)
def test_gpu_clustering_scores(pod: PodRequest, args: dict[str, Any], expected: dict[int, float]) -> None:
    assert scores(single("gpu-clustering", **args), classes_cluster(), pod) == expected


@pytest.mark.parametrize(
    ("args", "key"), [({"maxGpu": 0}, "maxGpu"), ({"maxGpu": 0.5}, "maxGpu"), ({"maxCpu": 1}, "maxCpu")]
)
def test_gpu_clustering_rejects_bad_args(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pluginArgs gpu-clustering\.{key}:"):
        single("gpu-clustering", **args)


def test_a_node_beyond_max_gpu_is_clipped_to_0() -> None:
    snap = snap_of([[1000] * 16])
    snap.place(req("a", gpus=1), 0, (0,))  # the node runs only 1-GPU pods; 15000 milli-GPU free
    # base = 25 * (8000 - 15000) // 8000 = -21 (Go's truncation); a share pod finds only another
    # class there: -21 + 0 = -21, clipped to 0
    assert scores(single("gpu-clustering"), snap, req("x", milli=300)) == {0: 0.0}
