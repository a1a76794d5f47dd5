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
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins import registry
from scheduler.plugins.lora import Lora
from tests.builders import gpu_node, pod

BASE = "meta-llama/Llama-3.1-8B@main"


def node(name: str, adapters: tuple[str, ...] = (), gpus: int = 2, **kw: Any) -> NodeState:
    return replace(gpu_node(name, gpus=gpus, **kw), lora_adapters={a: 100 * 2**20 for a in adapters})


def running(name: str, on: str, model: str = BASE, gpus: int = 1, workload: str = "inference") -> PodRequest:
    ann = {"gpusched.io/model": model, "gpusched.io/workload": workload}
    return parse_pod(pod(name, gpus, ann, node=on))


def lora_pod(adapters: str = "sql,chat", model: str = BASE, gpus: int = 1) -> PodRequest:
    ann = {"gpusched.io/lora-adapters": adapters}
    if model:
        ann["gpusched.io/model"] = model
    return parse_pod(pod("lora", gpus, ann))


def scores(nodes: list[NodeState], pods: list[PodRequest], p: PodRequest, args: dict[str, Any] | None = None) -> list:
    snap = ClusterSnapshot(nodes, pods)
    plugin = Lora.create(args)
    return plugin.score(Cycle(snap, p, SchedulerConfig()), np.arange(len(nodes))).tolist()


@pytest.mark.parametrize(
    ("case", "nodes", "pods", "p", "expected"),
    [
        (
            "base model served, with room, beats nothing",
            [node("serving"), node("idle")],
            [running("base", "serving")],
            lora_pod(),
            [60.0, 0.0],
        ),
        (
            "adapters cached count by fraction",
            [node("both", ("sql", "chat")), node("one", ("sql",)), node("none")],
            [],
            lora_pod(),
            [40.0, 20.0, 0.0],
        ),
        (
            "base and all adapters: full marks",
            [node("best", ("sql", "chat")), node("idle")],
            [running("base", "best")],
            lora_pod(),
            [100.0, 0.0],
        ),
        (
            "no room beside the base model: no credit for it",
            [node("full", ("sql",)), node("idle")],
            [running("base", "full", gpus=2)],
            lora_pod(),
            [20.0, 0.0],
        ),
        (
            "another model, or a training pod of this one, does not count",
            [node("other"), node("train"), node("idle")],
            [running("o", "other", model="mistralai/Mistral-7B@main"), running("t", "train", workload="training")],
            lora_pod(),
            [0.0, 0.0, 0.0],
        ),
        (
            "a pod without adapters is neutral",
            [node("serving", ("sql",)), node("idle")],
            [running("base", "serving")],
            lora_pod(adapters=""),
            [0.0, 0.0],
        ),
        (
            "no base model: adapters alone",
            [node("cached", ("sql",)), node("idle")],
            [],
            lora_pod(adapters="sql,sql", model=""),
            [40.0, 0.0],
        ),
        (
            "no report: no adapter cache, the bound pods still count",
            [node("bare", report_age_s=None), node("idle")],
            [running("base", "bare")],
            lora_pod(),
            [60.0, 0.0],
        ),
    ],
)
def test_lora_scores(
    case: str, nodes: list[NodeState], pods: list[PodRequest], p: PodRequest, expected: list[float]
) -> None:
    assert scores(nodes, pods, p) == pytest.approx(expected), case


def test_weights_are_args() -> None:
    got = scores(
        [node("serving", ("sql",))], [running("base", "serving")], lora_pod(), {"baseWeight": 1, "adapterWeight": 1}
    )
    assert got == pytest.approx([75.0])


@pytest.mark.parametrize("args", [{"baseWeight": -1}, {"baseWeight": 0, "adapterWeight": 0}, {"adapterWeight": "x"}])
def test_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Lora.create(args)


def test_serving_index_follows_place_and_remove() -> None:
    snap = ClusterSnapshot([node("a"), node("b")], [running("base", "a"), running("base2", "a")])
    assert snap.serving == {BASE: {0: 2}}
    with snap.without(["default/base", "default/base2"]):
        assert snap.serving == {}
    assert snap.serving == {BASE: {0: 2}}
    snap.place(running("base", "b"), 1)  # moved
    assert snap.serving == {BASE: {0: 1, 1: 1}}


def test_lora_pod_lands_beside_its_base_model() -> None:
    # least-allocated alone would pick an idle node; the base model outweighs it.
    cfg = registry.config_from(
        {"plugins": {"score": [{"name": "lora", "weight": 2}, {"name": "least-allocated", "weight": 2}]}}
    )
    fw = registry.build(cfg)
    nodes = [node("idle-0", gpus=8), node("serving", gpus=8), node("idle-1", gpus=8)]
    snap = ClusterSnapshot(nodes, [running("base", "serving")])
    assert snap.names[fw.decide(snap, lora_pod()).best()] == "serving"  # type: ignore[index]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from(["a", "b", "c"])), st.integers(0, 3), st.booleans()), min_size=1, max_size=6
    ),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4),
    st.integers(0, 3),
)
def test_scores_within_range(rows: list[Any], adapters: list[str], gpus: int) -> None:
    nodes = [node(f"n{i}", tuple(sorted(cached)), gpus=4) for i, (cached, _, _) in enumerate(rows)]
    pods = [running(f"r{i}", f"n{i}", gpus=held) for i, (_, held, serves) in enumerate(rows) if serves and held]
    got = np.array(scores(nodes, pods, lora_pod(",".join(adapters), gpus=gpus)))
    assert np.all((got >= 0) & (got <= 100))
    if not adapters:
        assert not got.any()
