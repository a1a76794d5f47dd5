"""best-fit (score): the node left with the least free CPU and GPU, integer min-max over the candidates."""

from typing import Any

import numpy as np
import pytest

from scheduler.core.config import ConfigError
from scheduler.core.types import PodRequest
from scheduler.plugins.baselines.best_fit import int_minmax
from tests.unit.plugins.baselines.helpers import req, scores, single, snap_of

# raw = int(100 * (1 - (0.5 * (cpu_free - cpu) / 128000 + 0.5 * (gpu_free - gpu) / 8000)))
# score = (raw - min raw) * 100 // (max raw - min raw)
IDLE, TWO_FREE, HALF = [1000] * 8, [1000, 1000] + [0] * 6, [1000] * 4 + [0] * 4


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


@pytest.mark.parametrize(
    ("frees", "cpus", "pod", "args", "expected"),
    [
        pytest.param(
            [IDLE, TWO_FREE, HALF],
            [96_000, 16_000, 64_000],
            req(gpus=1, cpu=4000),
            {},
            # raw: int(100 * (1 - (0.5*92000/128000 + 0.5*7000/8000))) = int(20.31) = 20,
            #      int(100 * (1 - (0.5*12000/128000 + 0.5*1000/8000))) = int(89.06) = 89,
            #      int(100 * (1 - (0.5*60000/128000 + 0.5*3000/8000))) = int(57.81) = 57
            # min-max over 20..89: 0, 100, (57-20)*100//69 = 53
            {0: 0.0, 1: 100.0, 2: 53.0},
            id="three nodes",
        ),
        pytest.param(
            [[1000, 1000], [1000, 400], [400, 400]],
            [96_000] * 3,
            req(milli=300, cpu=1000),
            {},
            # cpu term 0.5*95000/128000 = 0.37109375 everywhere; gpu term 0.5*(2000-300)/8000 = 0.10625,
            # 0.5*(1400-300)/8000 = 0.06875, 0.5*(800-300)/8000 = 0.03125
            # raw: int(52.27) = 52, int(56.02) = 56, int(59.77) = 59; min-max: 0, (56-52)*100//7 = 57, 100
            {0: 0.0, 1: 57.0, 2: 100.0},
            id="a share counts its milli-GPU",
        ),
        pytest.param([IDLE, IDLE], [96_000, 96_000], req(gpus=1), {}, {0: 0.0, 1: 0.0}, id="all equal: 0 everywhere"),
        pytest.param(
            [IDLE, TWO_FREE, HALF],
            [96_000, 16_000, 64_000],
            req(gpus=1, cpu=4000),
            {"cpuWeight": 0, "gpuWeight": 1},
            # GPU only: int(100 * (1 - 7000/8000)) = 12, int(100 * (1 - 1000/8000)) = 87,
            #           int(100 * (1 - 3000/8000)) = 62
            # min-max over 12..87: 0, 100, (62-12)*100//75 = 66
            {0: 0.0, 1: 100.0, 2: 66.0},
            id="cpuWeight 0 gpuWeight 1",
        ),
        pytest.param(
            [IDLE, TWO_FREE, HALF],
            [96_000, 16_000, 64_000],
            req(gpus=1, cpu=4000),
            {"maxGpu": 16_000},
            # gpu term halves: 0.5*7000/16000 = 0.21875, 0.5*1000/16000 = 0.03125, 0.5*3000/16000 = 0.09375
            # raw: int(100 * (1 - 0.578125)) = 42, int(100 * (1 - 0.078125)) = 92, int(100 * (1 - 0.328125)) = 67
            # min-max over 42..92: 0, 100, (67-42)*100//50 = 50
            {0: 0.0, 1: 100.0, 2: 50.0},
            id="maxGpu 16000",
        ),
    ],
)
def test_best_fit_scores(
    frees: list[list[int]], cpus: list[int], pod: PodRequest, args: dict[str, Any], expected: dict[int, float]
) -> None:
    assert scores(single("best-fit", **args), snap_of(frees, cpus), pod) == expected


@pytest.mark.parametrize(
    ("free", "pod", "expected"),
    [
        pytest.param([0, 1000, 500, 1000], req(gpus=2), (1, 3), id="whole GPUs: the first fully free"),
        pytest.param([0, 1000, 500, 1000], req(milli=300), (2,), id="a share: the least free that fits"),
        pytest.param([600, 1000, 600], req(milli=500), (0,), id="a share: the first of equals"),
    ],
)
def test_best_fit_chooses_gpus(free: list[int], pod: PodRequest, expected: tuple[int, ...]) -> None:
    assert single("best-fit").choose_gpus(snap_of([free]), pod, 0) == expected


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"maxCpu": 0}, "maxCpu"),
        ({"cpuWeight": -1}, "cpuWeight"),
        ({"gpuWeight": "x"}, "gpuWeight"),
        ({"weights": 1}, "weights"),
    ],
)
def test_best_fit_rejects_bad_args(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pluginArgs best-fit\.{key}:"):
        single("best-fit", **args)
