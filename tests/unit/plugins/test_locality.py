"""locality (score): 100 x bytes of the pod's images and weights on the node / bytes needed."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins.locality import Locality
from tests.builders import GiB, gpu_node, pod

IMAGE = "ghcr.io/acme/llm:1"
OTHER = "ghcr.io/acme/tools:2"
MODEL = "org/m@main"


def req(images: tuple[str, ...] = (), model: str = "", model_gib: int = 0) -> PodRequest:
    return PodRequest("default", "p", gpu_count=1, images=images, model=model, model_bytes=model_gib * GiB)


def node(name: str, images: dict[str, int] | None = None, weights: dict[str, int] | None = None) -> NodeState:
    """A node holding the given images and weights (sizes in GiB)."""
    return gpu_node(
        name,
        images={k: v * GiB for k, v in (images or {}).items()},
        models={k: v * GiB for k, v in (weights or {}).items()},
    )


def scores(nodes: list[NodeState], p: PodRequest) -> list[float]:
    snap = ClusterSnapshot(nodes)
    return Locality.create(None, None).score(Cycle(snap, p, SchedulerConfig()), np.arange(len(nodes))).tolist()


@pytest.mark.parametrize(
    ("nodes", "p", "expected"),
    [
        pytest.param(
            [node("has", {IMAGE: 2}), node("not")], req((IMAGE,)), [100.0, 0.0], id="image present or not"
        ),  # 100 * 2/2, 100 * 0/2
        pytest.param(
            [node("big", {IMAGE: 2}), node("small", {IMAGE: 1})],
            req((IMAGE,)),
            [100.0, 50.0],  # needed = largest reported = 2 GiB: 100 * 1/2 = 50
            id="size is the largest any node reports",
        ),
        pytest.param(
            [node("both", {IMAGE: 2, OTHER: 6}), node("one", {IMAGE: 2}), node("other", {OTHER: 6})],
            req((IMAGE, OTHER)),
            [100.0, 25.0, 75.0],  # needed 2 + 6 = 8 GiB: 100 * 8/8, 100 * 2/8, 100 * 6/8
            id="two images by bytes",
        ),
        pytest.param(
            [node("w", weights={MODEL: 16}), node("none")], req(model=MODEL), [100.0, 0.0], id="weights"
        ),  # needed 16 GiB (largest reported)
        pytest.param(
            [node("half", weights={MODEL: 8}), node("none")],
            req(model=MODEL, model_gib=16),
            [50.0, 0.0],  # the annotation's 16 GiB: 100 * 8/16 = 50
            id="partial weights against the annotation",
        ),
        pytest.param(
            [node("more", weights={MODEL: 20})],
            req(model=MODEL, model_gib=16),
            [100.0],  # min(20, 16) = 16: 100 * 16/16
            id="more than the annotation counts as all of it",
        ),
        pytest.param(
            [node("img", {IMAGE: 2}), node("w", weights={MODEL: 16}), node("both", {IMAGE: 2}, {MODEL: 16})],
            req((IMAGE,), MODEL),
            [100 * 2 / 18, 100 * 16 / 18, 100.0],  # needed 2 + 16 = 18 GiB: 11.11, 88.89, 100
            id="images and weights together",
        ),
        pytest.param(
            [node("w", weights={MODEL: 16}), node("none")],
            req(("ghcr.io/nobody/has:this",), MODEL),
            [100.0, 0.0],  # an image no node has is of unknown size: needed 0 + 16 GiB
            id="an image known nowhere counts 0 bytes",
        ),
        pytest.param([node("a", {IMAGE: 2}), node("b")], req(), [0.0, 0.0], id="fallback: the pod needs nothing"),
        pytest.param(
            [node("a", {IMAGE: 2}), node("b")],
            req(("ghcr.io/nobody/has:this",), "org/unknown@main"),
            [0.0, 0.0],
            id="fallback: nothing it needs is known anywhere",
        ),
        pytest.param(
            [node("a", {"docker.io/library/nginx:latest": 1}), node("b")],
            req(("nginx",)),
            [100.0, 0.0],
            id="image references compare in canonical form",
        ),
    ],
)
def test_scores(nodes: list[NodeState], p: PodRequest, expected: list[float]) -> None:
    assert scores(nodes, p) == pytest.approx(expected)


def test_pod_spec_and_annotations_reach_the_score() -> None:
    p = parse_pod(pod("p", 1, {"gpusched.io/model": MODEL, "gpusched.io/model-bytes": "14Gi"}, image=IMAGE))
    # needed 2 GiB image + 14 GiB weights = 16 GiB: a holds 2 + min(7, 14) = 9 -> 100 * 9/16 = 56.25
    assert scores([node("a", {IMAGE: 2}, {MODEL: 7}), node("b")], p) == pytest.approx([56.25, 0.0])


def test_weights_need_a_report() -> None:
    # Without a GPUNodeReport there is no cache inventory; the node's status.images still count.
    bare = gpu_node("bare", images={IMAGE: 2 * GiB}, models={MODEL: 16 * GiB}, report_age_s=None)
    # needed: 2 GiB image + 16 GiB weights (from the other node): 100 * 2/18 and 100 * 16/18
    assert scores([bare, node("w", weights={MODEL: 16})], req((IMAGE,), MODEL)) == pytest.approx(
        [100 * 2 / 18, 100 * 16 / 18]
    )


@pytest.mark.parametrize("args", [{"foo": 1}, {"imageWeight": 2}])
def test_takes_no_args(args: dict[str, Any]) -> None:
    key = next(iter(args))
    with pytest.raises(ConfigError, match=rf"pluginArgs locality\.{key}: unknown argument"):
        Locality.create(args)


sizes = st.integers(0, 64)  # GiB; 0: not on the node


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(sizes, sizes, sizes), min_size=1, max_size=6),
    st.sampled_from([(), (IMAGE,), (IMAGE, OTHER), (IMAGE, IMAGE)]),
    st.booleans(),
    st.integers(0, 64),
)
def test_scores_stay_within_0_and_100(
    rows: list[tuple[int, int, int]], images: tuple[str, ...], with_model: bool, model_gib: int
) -> None:
    nodes = [
        node(
            f"n{i}",
            {k: v for k, v in ((IMAGE, a), (OTHER, b)) if v},
            {MODEL: w} if w else None,
        )
        for i, (a, b, w) in enumerate(rows)
    ]
    got = np.asarray(scores(nodes, req(images, MODEL if with_model else "", model_gib)))
    assert np.isfinite(got).all()
    assert ((got >= 0) & (got <= 100)).all()
