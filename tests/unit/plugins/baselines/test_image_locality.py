"""image-locality (score): kube-scheduler's ImageLocality formula, unchanged."""

import numpy as np
import pytest

from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.plugins.baselines.image_locality import ImageLocality
from tests.unit.plugins.baselines.helpers import req, scores, single, trace_node

MiB = 1024 * 1024
A, B = "ghcr.io/acme/server:1", "ghcr.io/acme/sidecar:2"


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


# sum = sum over the pod's images on the node of int(bytes * nodes with it / all nodes), clamped to
# 23 MiB .. 1000 MiB * containers; score = 100 * (sum - 23 MiB) // (1000 MiB * containers - 23 MiB).
@pytest.mark.parametrize(
    ("held", "images", "expected"),
    [
        pytest.param(
            [{A: 800, B: 600}, {A: 800}, {A: 800}, {A: 800}],
            (A, B),
            # A on 4/4: 800; B on 1/4: int(600 * 0.25) = 150; top 2 * 1000 = 2000 MiB
            # node 0: 100 * (950 - 23) // (2000 - 23) = 92700 // 1977 = 46; others 77700 // 1977 = 39
            [46.0, 39.0, 39.0, 39.0],
            id="two containers",
        ),
        pytest.param(
            [{A: 400}, {A: 400}, {A: 400}, {}],
            (A,),
            [28.0, 28.0, 28.0, 0.0],  # int(400 * 3/4) = 300: 100 * (300 - 23) // 977 = 28; below 23 -> 0
            id="on three of four nodes",
        ),
        pytest.param(
            [{A: 2000}] * 4, (A,), [100.0] * 4, id="capped at 1000 MiB per container"
        ),  # min(2000, 1000): 100 * 977 // 977
        pytest.param([{A: 20}] * 4, (A,), [0.0] * 4, id="below 23 MiB is nothing"),  # max(20, 23) - 23 = 0
        pytest.param([{A: 800}] * 4, (B,), [0.0] * 4, id="an image no node has"),
        pytest.param([{A: 800}] * 4, (), [0.0] * 4, id="a pod without images"),
    ],
)
def test_image_locality_scores(held: list[dict[str, int]], images: tuple[str, ...], expected: list[float]) -> None:
    nodes = [trace_node(f"n{i}", images={k: v * MiB for k, v in h.items()}) for i, h in enumerate(held)]
    snap = ClusterSnapshot(nodes)
    plugin = ImageLocality.create()
    assert plugin.score(Cycle(snap, req(images=images), plugin.config), np.arange(len(nodes))).tolist() == expected
