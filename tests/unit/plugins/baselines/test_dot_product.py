"""dot-product (score): int(100 * (1 - dot / 2)), dot = free . request, each normalised by the largest node."""

from typing import Any

import pytest

from scheduler.core.config import ConfigError
from scheduler.core.types import PodRequest
from tests.unit.plugins.baselines.helpers import req, scores, single, snap_of


def test_dot_product_prefers_the_free_vector_least_aligned_with_the_request() -> None:
    snap = snap_of([[1000] * 8, [1000, 1000, 0, 0, 0, 0, 0, 0]], [96_000, 16_000])
    got = scores(single("dot-product"), snap, req(gpus=1, cpu=8000))
    dot0 = (96_000 / 128_000 * 8_000 / 128_000 + 8000 / 8000 * 1000 / 8000) / 2
    dot1 = (16_000 / 128_000 * 8_000 / 128_000 + 2000 / 8000 * 1000 / 8000) / 2
    assert got == {0: float(int(100 * (1 - dot0))), 1: float(int(100 * (1 - dot1)))}
    assert got[1] > got[0]


# dot = cpu_free/maxCpu * cpu/maxCpu + gpu_free/maxGpu * gpu/maxGpu (maxCpu 128000, maxGpu 8000)
@pytest.mark.parametrize(
    ("frees", "cpus", "pod", "args", "expected"),
    [
        pytest.param(
            [[1000] * 8, [1000, 600]],
            [96_000, 96_000],
            req(milli=500, cpu=0),
            {},
            # 8000/8000 * 500/8000 = 0.0625 -> int(100 * (1 - 0.03125)) = 96
            # 1600/8000 * 500/8000 = 0.0125 -> int(100 * (1 - 0.00625)) = 99
            {0: 96.0, 1: 99.0},
            id="a share",
        ),
        pytest.param(
            [[0], [0]],
            [96_000, 64_000],
            req(cpu=32_000),
            {},
            # 96000/128000 * 32000/128000 = 0.1875 -> int(100 * (1 - 0.09375)) = 90
            # 64000/128000 * 32000/128000 = 0.125 -> int(100 * (1 - 0.0625)) = 93
            {0: 90.0, 1: 93.0},
            id="cpu only",
        ),
        pytest.param(
            [[0], [0]],
            [96_000, 64_000],
            req(cpu=32_000),
            {"maxCpu": 64_000},
            # 96000/64000 * 32000/64000 = 0.75 -> int(100 * (1 - 0.375)) = 62
            # 64000/64000 * 32000/64000 = 0.5 -> int(100 * (1 - 0.25)) = 75
            {0: 62.0, 1: 75.0},
            id="maxCpu 64000",
        ),
        pytest.param(
            [[1000] * 8], [96_000], req(gpus=8, cpu=0), {}, {0: 50.0}, id="the whole node"
        ),  # 8000/8000 * 8000/8000 = 1 -> int(100 * (1 - 0.5)) = 50
        pytest.param(
            [[1000] * 16], [96_000], req(gpus=16, cpu=0), {}, {0: 0.0}, id="a node beyond maxGpu is clipped"
        ),  # 16000/8000 * 16000/8000 = 4 -> int(100 * (1 - 2)) = -100 -> clipped to 0
    ],
)
def test_dot_product_scores(
    frees: list[list[int]], cpus: list[int], pod: PodRequest, args: dict[str, Any], expected: dict[int, float]
) -> None:
    assert scores(single("dot-product", **args), snap_of(frees, cpus), pod) == expected


@pytest.mark.parametrize(
    ("args", "key"), [({"maxGpu": "x"}, "maxGpu"), ({"maxCpu": -1}, "maxCpu"), ({"cpuWeight": 1}, "cpuWeight")]
)
def test_dot_product_rejects_bad_args(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pluginArgs dot-product\.{key}:"):
        single("dot-product", **args)
