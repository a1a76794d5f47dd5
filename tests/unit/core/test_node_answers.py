"""Kept per-node answers (scheduler/core/node_answers.py): a decision that reuses them equals a
fresh one, after any sequence of placements, removals and node updates."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core import node_answers
from scheduler.core import snapshot as snapshot_module
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, Decision, FilterPlugin, Framework, Rejection
from scheduler.core.node_answers import NodeAnswers, pod_shape, shape_key
from scheduler.core.snapshot import ClusterSnapshot, SnapshotError
from scheduler.core.types import PodRequest
from scheduler.plugins import registry
from scheduler.plugins.freshness import Freshness
from tests.builders import gpu_node

GiB = 2**30
IMAGE, WEIGHTS, ADAPTER = "reg.example/serve:1", "org/llama@1", "org/adapter@1"


def framework() -> Framework:
    return registry.build(registry.config_from(None))


def cluster() -> ClusterSnapshot:
    nodes = [
        gpu_node("a", gpus=4, images={IMAGE: 10 * GiB}, models={WEIGHTS: 16 * GiB}),
        gpu_node("b", gpus=4, model="L4", memory_gib=24, interconnect="pcie", labels={"rack": "r1"}),
        gpu_node("c", gpus=2, model="A100-40GB", memory_gib=40, cuda=(12, 2)),
        gpu_node("d", gpus=4, report_age_s=None),
        gpu_node("e", gpus=4, report_age_s=200.0),  # stale: freshness turns it away (not kept)
    ]
    return ClusterSnapshot(nodes)


def assert_same(kept: Decision, fresh: Decision) -> None:
    assert kept.error == fresh.error
    assert kept.feasible.tolist() == fresh.feasible.tolist()
    assert kept.scores.keys() == fresh.scores.keys()
    for name, values in fresh.scores.items():
        assert kept.scores[name].tolist() == values.tolist(), name
    assert np.array_equal(kept.total, fresh.total)
    assert [rejection(r) for r in kept.rejections] == [rejection(r) for r in fresh.rejections]
    # The extender answers each group once: every node in its group, with its own reason
    for r in kept.rejections:
        grouped = {(n, reason, resolvable) for reason, nodes, resolvable in r.grouped() for n in nodes.tolist()}
        assert grouped == set(zip(r.nodes.tolist(), r.reasons, r.resolvable.tolist(), strict=True))
        assert sum(nodes.size for _, nodes, _ in r.grouped()) == r.nodes.size


def rejection(r: Rejection) -> tuple[str, list[tuple[int, str, bool]], bool]:
    """A rejection's plugin, each node with its reason and resolvability (in node order: the
    kept path lists each reason's nodes together), and whether it is transient."""
    return r.plugin, sorted(zip(r.nodes.tolist(), r.reasons, r.resolvable.tolist(), strict=True)), r.transient


# ------------------------------------------------------------------ pods asked about
POD_SHAPES = [
    PodRequest("ns", "one", gpu_count=1),
    PodRequest("ns", "two", gpu_count=2, gpu_memory=30 * GiB),
    PodRequest("ns", "four", gpu_count=4, cuda=(12, 4)),
    PodRequest("ns", "share", gpu_milli=300),
    PodRequest("ns", "h100", gpu_count=1, gpu_models=("H100",)),
    PodRequest("ns", "serve", gpu_count=1, images=(IMAGE,), model=WEIGHTS, workload="inference", owner="Deploy/x"),
    PodRequest("ns", "big", gpu_count=2, model=WEIGHTS, model_bytes=70 * GiB, workload="inference", owner="Deploy/y"),
    PodRequest("ns", "lora", gpu_count=1, model=WEIGHTS, lora_adapters=(ADAPTER,)),
    PodRequest("other", "pulls", gpu_count=1, images=("reg.example/other:2",), cpu_milli=2000),
]
asked = st.tuples(st.sampled_from(POD_SHAPES), st.text("xyz", min_size=1, max_size=3))


def ask(pod: PodRequest, name: str) -> PodRequest:
    """The shape under another name: a replica of the same request."""
    return replace(pod, name=f"{pod.name}-{name}", uid=name)


# ------------------------------------------------------------------------ events
Event = Callable[[ClusterSnapshot], None]


def place(node: int, shape: PodRequest, name: str) -> Event:
    def run(snap: ClusterSnapshot) -> None:
        pod = ask(shape, name)
        if pod.key in snap.placements or node >= len(snap):
            return
        gpus = snap.first_free_gpus(node, pod.gpus_needed, pod.milli_per_gpu)
        if len(gpus) == pod.gpus_needed:
            with contextlib.suppress(SnapshotError):  # over the Node's allocatable count
                snap.place(replace(pod, node_name=snap.names[node]), node, gpus)

    return run


def remove(index: int) -> Event:
    def run(snap: ClusterSnapshot) -> None:
        keys = sorted(snap.placements)
        if keys:
            snap.remove(keys[index % len(keys)])

    return run


def update(node: int, change: str) -> Event:
    """The node's report or Node object changes: what it caches, a GPU's health, its driver."""

    def run(snap: ClusterSnapshot) -> None:
        old = snap.nodes[node]
        if change == "image":
            new = replace(old, images={**old.images, IMAGE: 12 * GiB})  # a larger size than a's
        elif change == "weights":
            new = replace(old, models={**old.models, WEIGHTS: 20 * GiB})
        elif change == "uncache":
            new = replace(old, images={}, models={})
        elif change == "adapter":
            new = replace(old, lora_adapters={ADAPTER: GiB})
        elif change == "unhealthy" and old.gpus:
            new = replace(old, gpus=(replace(old.gpus[0], healthy=False), *old.gpus[1:]))
        elif change == "driver":
            new = replace(old, cuda=(12, 2) if old.cuda == (12, 4) else (12, 4))
        elif change == "cordon":
            new = replace(old, schedulable=not old.schedulable)
        elif change == "disk":
            new = replace(old, image_fs_free=5 * GiB, image_fs_total=100 * GiB)
        elif change == "pull":
            new = replace(old, pull_bytes_per_s=old.pull_bytes_per_s * 2 + 50e6)
        else:
            new = replace(old)
        snap.update_node(node, new)

    return run


def age(node: int, seconds: float) -> Event:
    def run(snap: ClusterSnapshot) -> None:
        snap.report_time[node] = snap.read_at - seconds  # as ClusterState keeps it

    return run


nodes = st.integers(0, 4)
Step = tuple[Event, tuple[PodRequest, str], list[int]]  # an event, then a pod asked about, over some nodes
events = st.one_of(
    st.builds(place, nodes, st.sampled_from(POD_SHAPES), st.text("pq", min_size=1, max_size=2)),
    st.builds(remove, st.integers(0, 20)),
    st.builds(
        update,
        nodes,
        st.sampled_from(["image", "weights", "uncache", "adapter", "unhealthy", "driver", "cordon", "disk", "pull"]),
    ),
    st.builds(age, nodes, st.sampled_from([0.0, 30.0, 200.0])),
)


def replay(steps: list[Step]) -> None:
    snap, reusing, fresh = cluster(), framework(), framework()
    for event, (shape, name), subset in steps:
        event(snap)
        pod = ask(shape, name)
        candidates = np.array(subset or range(len(snap)), dtype=np.intp)
        kept = reusing.decide(snap, pod, candidates, reuse=True)
        assert_same(kept, fresh.decide(snap, pod, candidates))
        again = reusing.score_feasible(snap, pod, kept.feasible, reuse=True)
        assert np.array_equal(again.total, kept.total)


steps = st.lists(st.tuples(events, asked, st.lists(nodes, max_size=5, unique=True)), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_decision_with_kept_answers_equals_a_fresh_one(steps: list[Step]) -> None:
    replay(steps)


@settings(max_examples=100, deadline=None)
@given(steps)
def test_the_same_when_the_log_of_changes_is_cut_short(steps: list[Step]) -> None:
    # Kept answers read the nodes changed since from the snapshot's log; cut to two changes, it
    # soon no longer reaches back and every node's change count is compared instead.
    with mock.patch.object(snapshot_module, "CHANGE_LOG", 2):
        replay(steps)


# --------------------------------------------------------------- what is kept
def test_only_changed_nodes_are_asked_again() -> None:
    snap, fw = cluster(), framework()
    pod = ask(POD_SHAPES[0], "1")
    fw.decide(snap, pod, reuse=True)
    answers = NodeAnswers.of(snap, fw).shape(snap, pod)
    asked_at = answers.filter_at.copy()
    # Another replica of the same shape, nothing changed: nothing is asked again.
    fw.decide(snap, ask(POD_SHAPES[0], "2"), reuse=True)
    assert answers.filter_at.tolist() == asked_at.tolist()
    # A pod placed on b: only b is asked again, at the snapshot's new change count.
    place(1, POD_SHAPES[0], "placed")(snap)
    fw.decide(snap, ask(POD_SHAPES[0], "3"), reuse=True)
    assert (answers.filter_at != asked_at).tolist() == [False, True, False, False, False]
    assert answers.filter_at[1] == snap.changes


def test_a_change_to_what_nodes_cache_drops_every_kept_answer() -> None:
    snap, fw = cluster(), framework()
    pod = ask(POD_SHAPES[5], "1")
    fw.decide(snap, pod, reuse=True)
    first = NodeAnswers.of(snap, fw).shape(snap, pod)
    update(1, "image")(snap)  # b now holds the image, at a larger size: locality moves on a too
    fw.decide(snap, pod, reuse=True)
    assert NodeAnswers.of(snap, fw).shape(snap, pod) is not first


def test_the_shape_leaves_out_who_the_pod_is() -> None:
    # name, uid, namespace, owner, gang and placement fields: 9 differences, one shape
    a = PodRequest("ns", "a", uid="1", gpu_count=2, owner="Deploy/x", pod_group="g", rank=0, priority=5)
    b = PodRequest("other", "b", uid="2", gpu_count=2, owner="Deploy/y", pod_group="h", rank=1, node_name="n")
    assert pod_shape(a) == pod_shape(b) and shape_key(a) == shape_key(b)
    assert pod_shape(a) != pod_shape(replace(a, gpu_memory=GiB))  # what it asks is the shape
    assert shape_key(a) != shape_key(replace(a, gpu_memory=GiB))


def test_at_most_max_shapes_are_kept_the_least_recently_asked_going_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_answers, "MAX_SHAPES", 2)
    snap, answers = cluster(), NodeAnswers()
    one, two, three = (PodRequest("", "", gpu_count=count) for count in (1, 2, 3))
    first = answers.shape(snap, one)
    answers.shape(snap, two)
    assert answers.shape(snap, one) is first  # asked again: now the most recent
    answers.shape(snap, three)  # makes room: two goes
    assert [key[0] for key in answers.shapes] == [1, 3]  # shape_key starts with gpu_count
    assert answers.shape(snap, one) is first


class EachOwnReason(FilterPlugin):
    """Turns away every odd node, each with a reason of its own: many failure keys."""

    name = "each-own"
    filter_per_node = True

    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        return nodes % 2 == 0

    def reason(self, cycle: Cycle, node: int) -> str:
        return f"node {node} is odd"

    def resolvable(self, cycle: Cycle, node: int) -> bool:
        return node % 4 == 1


@pytest.mark.parametrize(
    "count",
    [
        # 300 odd nodes, each with its own reason: 300 keys > 255, widened while asking each-own
        pytest.param(600, id="widened by the kept filter"),
        # 255 odd nodes: keys 1..255 fill 8 bits; freshness's key is the 256th, made mid-decision
        pytest.param(510, id="widened by the filter not kept"),
    ],
)
def test_more_reasons_than_8_bit_keys_hold_give_the_same_decision(count: int) -> None:
    config = SchedulerConfig()
    # n003 and n004 are stale too
    nodes = [gpu_node(f"n{i:03d}", gpus=1, report_age_s=500.0 if i in (3, 4) else 0.0) for i in range(count)]
    snap = ClusterSnapshot(nodes)
    framework = Framework(config, (), [EachOwnReason.create(None, config), Freshness.create(None, config)], [])
    pod = PodRequest("ns", "p", gpu_count=1)
    for _ in range(2):  # the second time from the kept answers
        kept = framework.decide(snap, pod, reuse=True)
        assert_same(kept, framework.decide(snap, pod))
    answers = NodeAnswers.of(snap, framework).shape(snap, pod)
    assert answers.fail_key.dtype == np.uint16 and len(answers.key_position) > 256
    # n003: odd, turned away by each-own (first in order), not by freshness; n004: by freshness
    assert kept.rejected_by[3] == "each-own" and kept.rejected_by[4] == "freshness"
