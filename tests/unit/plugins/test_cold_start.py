from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState
from scheduler.plugins import registry
from scheduler.plugins.cold_start import ColdStart, Priors, predicted_seconds
from tests.builders import GiB, gpu_node, pod

MB = 10**6
IMAGE = "ghcr.io/acme/llm-server:1.4"
MODEL = "meta-llama/Llama-3.1-8B@main"


def node(name: str, bw: tuple[float, float, float] = (0, 0, 0), **kw: Any) -> NodeState:
    base = gpu_node(name, **kw)
    return replace(base, pull_bytes_per_s=bw[0], download_bytes_per_s=bw[1], disk_bytes_per_s=bw[2])


def llm_pod(annotations: dict[str, str] | None = None, image: str = IMAGE) -> Any:
    return parse_pod(pod("srv", 1, {"gpusched.io/model": MODEL, **(annotations or {})}, image=image))


def seconds_on(nodes: list[NodeState], p: Any, priors: Priors | None = None) -> list[float]:
    snap = ClusterSnapshot(nodes)
    return predicted_seconds(snap, p, np.arange(len(nodes)), priors).tolist()


# Priors: pull 100 MB/s, download 200 MB/s, disk 1 GB/s.
@pytest.mark.parametrize(
    ("case", "nodes", "annotations", "expected"),
    [
        (
            "warm node only loads from disk",
            [node("warm", images={IMAGE: 2000 * MB}, models={MODEL: 16000 * MB}), node("cold")],
            {},
            [16.0, 20.0 + 80.0 + 16.0],
        ),
        (
            "measured bandwidth beats the priors",
            [
                node("fast", (1000 * MB, 1000 * MB, 4000 * MB)),
                node("cold"),
                node("ref", images={IMAGE: 2000 * MB}, models={MODEL: 16000 * MB}),
            ],
            {},
            [2.0 + 16.0 + 4.0, 116.0, 16.0],
        ),
        (
            "a partial weights cache counts what it holds",
            [node("half", models={MODEL: 8000 * MB}), node("other", images={IMAGE: 2000 * MB})],
            {"gpusched.io/model-bytes": "16G"},
            [20.0 + 40.0 + 16.0, 80.0 + 16.0],
        ),
        (
            "the annotation's size beats the reports",
            [node("a", images={IMAGE: 2000 * MB}, models={MODEL: 16000 * MB})],
            {"gpusched.io/model-bytes": "32G"},
            [80.0 + 32.0],
        ),
        (
            "weights of unknown size count 0; images of unknown size too",
            [node("a"), node("b")],
            {},
            [0.0, 0.0],
        ),
    ],
)
def test_predicted_seconds(
    case: str, nodes: list[NodeState], annotations: dict[str, str], expected: list[float]
) -> None:
    assert seconds_on(nodes, llm_pod(annotations)) == pytest.approx(expected), case


def test_image_names_match_in_canonical_form_and_count_once() -> None:
    nodes = [node("has", images={"docker.io/library/nginx:latest": 500 * MB}), node("not")]
    p = parse_pod(pod("p", 1, image="nginx"))
    p = replace(p, images=("nginx", "docker.io/library/nginx"))
    assert seconds_on(nodes, p) == pytest.approx([0.0, 5.0])


def test_unknown_images_use_the_stated_size() -> None:
    nodes = [node("a", (50 * MB, 0, 0)), node("b")]
    p = parse_pod(pod("p", 1, image="ghcr.io/unseen/img:1"))
    assert seconds_on(nodes, p, Priors(unknown_image_bytes=1000 * MB)) == pytest.approx([20.0, 10.0])


def plugin(args: dict[str, Any] | None = None) -> ColdStart:
    return ColdStart.create(args)


def test_score_notes_and_shape() -> None:
    snap = ClusterSnapshot([node("warm", images={IMAGE: 2000 * MB}, models={MODEL: 16000 * MB}), node("cold")])
    cycle = Cycle(snap, llm_pod(), SchedulerConfig())
    scores = plugin({"halfScoreSeconds": 16}).score(cycle, np.arange(2))
    assert scores.tolist() == pytest.approx([50.0, 100 * 16 / (16 + 116)])
    assert cycle.note("cold_start_seconds") == {"warm": 16.0, "cold": 116.0}


def test_a_pod_that_needs_nothing_is_neutral_and_leaves_no_note() -> None:
    snap = ClusterSnapshot([node("a"), node("b")])
    cycle = Cycle(snap, parse_pod(pod("p", 1, image="")), SchedulerConfig())
    assert plugin().score(cycle, np.arange(2)).tolist() == [100.0, 100.0]
    assert "cold_start_seconds" not in cycle.notes


def test_explain_shows_the_seconds_through_the_framework() -> None:
    cfg = registry.config_from(
        {
            "plugins": {"score": [{"name": "cold-start", "weight": 1}]},
            "pluginArgs": {"cold-start": {"pullBytesPerSecond": "50M"}},
        }
    )
    fw = registry.build(cfg)
    snap = ClusterSnapshot([node("cold"), node("warm", images={IMAGE: 2000 * MB}, models={MODEL: 16000 * MB})])
    decision = fw.decide(snap, llm_pod())
    assert snap.names[decision.best()] == "warm"  # type: ignore[index]
    assert decision.explain()["notes"]["cold_start_seconds"] == {"cold": 136.0, "warm": 16.0}


@pytest.mark.parametrize(
    "args",
    [
        {"pullBytesPerSecond": 0},
        {"downloadBytesPerSecond": "-5M"},
        {"diskBytesPerSecond": "fast"},
        {"halfScoreSeconds": 0},
        {"unknownImageBytes": -1},
        {"pullBytesPerSecond": None},
    ],
)
def test_bad_args_are_config_errors(args: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        plugin(args)


sizes = st.integers(0, 200 * GiB)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(sizes, sizes, st.floats(0, 1e10), st.floats(0, 1e10), st.floats(0, 1e10), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 300 * GiB),
    st.floats(0.1, 10_000),
)
def test_scores_in_range_and_warmer_is_never_slower(rows: list[Any], model_bytes: int, half: float) -> None:
    nodes = [
        node(
            f"n{i}",
            (pull, dl, disk),
            images={IMAGE: img} if img else {},
            models={MODEL: w} if w else {},
            report_age_s=0.0 if reported else None,
        )
        for i, (img, w, pull, dl, disk, reported) in enumerate(rows)
    ]
    snap = ClusterSnapshot(nodes)
    p = llm_pod({"gpusched.io/model-bytes": str(model_bytes)} if model_bytes else {})
    cycle = Cycle(snap, p, SchedulerConfig())
    scores = plugin({"halfScoreSeconds": half}).score(cycle, np.arange(len(nodes)))
    assert np.all((scores >= 0) & (scores <= 100))
    seconds = predicted_seconds(snap, p, np.arange(len(nodes)))
    assert np.all(seconds >= 0)
    # Same bandwidth everywhere: a node holding everything is at least as quick as one holding nothing.
    even = ClusterSnapshot([node("full", images={IMAGE: 1}, models={MODEL: 300 * GiB}), node("empty")])
    quick, slow = predicted_seconds(even, p, np.arange(2))
    assert quick <= slow
