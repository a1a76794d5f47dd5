from dataclasses import dataclass, replace

import pytest

from scheduler.core.gpu_assignment import Disagreement, GpuAssignments, describe
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState
from tests.builders import gpu_node, pod


@dataclass(frozen=True)
class Step:
    annotation: tuple[int, ...]  # what gpusched.io/gpu-ids says
    kubelet: tuple[int, ...]  # what the report's holders say
    recorded: Disagreement | None  # the pod's record afterwards
    total: int  # disagreements counted so far


@dataclass(frozen=True)
class Case:
    id: str
    steps: tuple[Step, ...]


CASES = [
    Case("agree", (Step((0, 1), (0, 1), None, 0),)),
    Case("agree-in-another-order", (Step((1, 0), (0, 1), None, 0),)),  # sets, not sequences
    Case("no-report-yet", (Step((0,), (), None, 0),)),  # nothing to compare
    Case("not-bound-by-gpusched", (Step((), (2,), None, 0),)),  # no recommendation to contradict
    Case("disagree", (Step((0,), (2,), Disagreement((0,), (2,)), 1),)),
    Case(
        "seen-again-counts-once",  # report heartbeats, relists: the same disagreement, one count
        (Step((0,), (2,), Disagreement((0,), (2,)), 1), Step((0,), (2,), Disagreement((0,), (2,)), 1)),
    ),
    Case(
        "kubelet-moves-counts-again",  # 1 + 1 = 2: a different pair of sets is a new disagreement
        (Step((0,), (2,), Disagreement((0,), (2,)), 1), Step((0,), (3,), Disagreement((0,), (3,)), 2)),
    ),
    Case(
        "settled-then-contradicted-again",  # the record goes once they agree; a new one counts: 1 + 1 = 2
        (
            Step((0, 1), (2, 3), Disagreement((0, 1), (2, 3)), 1),
            Step((0, 1), (0, 1), None, 1),
            Step((0, 1), (2, 3), Disagreement((0, 1), (2, 3)), 2),
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_observe_records_and_counts_each_disagreement_once(case: Case) -> None:
    seen = GpuAssignments()
    for step in case.steps:
        seen.observe("default/p", step.annotation, step.kubelet)
        assert seen.disagreements.get("default/p") == step.recorded
        assert seen.total == step.total


def test_forget_and_retain_drop_records_but_never_the_count() -> None:
    seen = GpuAssignments()
    for key in ("default/a", "default/b", "default/c"):
        seen.observe(key, (0,), (1,))
    seen.forget("default/a")
    seen.retain({"default/b"})
    assert list(seen.disagreements) == ["default/b"]
    assert seen.total == 3  # a counter never goes down


def with_holders(node: NodeState, holders: dict[int, str]) -> NodeState:
    gpus = tuple(replace(g, holders=(holders[g.index],) if g.index in holders else ()) for g in node.gpus)
    return replace(node, gpus=gpus)


def test_the_snapshot_counts_the_pod_where_the_kubelet_says_and_records_the_disagreement() -> None:
    node = with_holders(gpu_node("a", gpus=4), {2: "default/p"})
    snap = ClusterSnapshot([node], [parse_pod(pod("p", gpus=1, node="a", gpuIds=[0]))])
    assert snap.placements["default/p"].gpus == (2,)
    assert snap.assignments.disagreements == {"default/p": Disagreement((0,), (2,))}
    assert describe(snap, "default/p") == {"annotation": [0], "kubelet": [2], "counted": [2]}


def test_assignments_outlive_a_snapshot_so_a_rebuild_does_not_count_again() -> None:
    node = with_holders(gpu_node("a", gpus=4), {2: "default/p"})
    running = parse_pod(pod("p", gpus=1, node="a", gpuIds=[0]))
    seen = GpuAssignments()
    ClusterSnapshot([node], [running], assignments=seen)
    ClusterSnapshot([node], [running], assignments=seen)
    assert seen.total == 1


@pytest.mark.parametrize(
    ("holders", "gpu_ids", "expected"),
    [
        ({}, [1], {"annotation": [1], "kubelet": [], "counted": [1]}),  # no report holders yet: the annotation
        ({1: "default/p"}, [1], {"annotation": [1], "kubelet": [1], "counted": [1]}),
        ({}, None, {"annotation": [], "kubelet": [], "counted": [0]}),  # bound by another: first free
    ],
    ids=["annotation-only", "agree", "bound-elsewhere"],
)
def test_describe_says_what_each_source_names(
    holders: dict[int, str], gpu_ids: list[int] | None, expected: dict[str, list[int]]
) -> None:
    node = with_holders(gpu_node("a", gpus=2), holders)
    snap = ClusterSnapshot([node], [parse_pod(pod("p", gpus=1, node="a", gpuIds=gpu_ids))])
    assert describe(snap, "default/p") == expected
    assert snap.assignments.total == 0


def test_describe_is_none_for_a_pod_the_snapshot_does_not_place() -> None:
    snap = ClusterSnapshot([gpu_node("a", gpus=2)])
    assert describe(snap, "default/pending") is None


def test_a_taken_gpu_is_never_given_twice_when_the_kubelet_contradicts_gpusched() -> None:
    # q's annotation names GPU 2, which the kubelet says p holds: q is counted on a free GPU
    # instead, and no GPU goes below 0 milli free.
    node = with_holders(gpu_node("a", gpus=3), {2: "default/p"})
    p = parse_pod(pod("p", gpus=1, node="a", gpuIds=[0]))
    q = parse_pod(pod("q", gpus=1, node="a", gpuIds=[2]))
    snap = ClusterSnapshot([node], [p, q])
    assert snap.placements["default/p"].gpus == (2,)
    assert snap.placements["default/q"].gpus == (0,)
    assert snap.over_committed() == []


def test_gpu_info_holders_are_pod_keys_per_node() -> None:
    # The same pod name in two namespaces, on two nodes: each is found only where its report says.
    a = with_holders(gpu_node("a", gpus=2), {1: "team-a/p"})
    b = with_holders(gpu_node("b", gpus=2), {0: "team-b/p"})
    snap = ClusterSnapshot([a, b])
    assert snap.kubelet_gpus(0, "team-a/p") == (1,)
    assert snap.kubelet_gpus(0, "team-b/p") == ()
    assert snap.kubelet_gpus(1, "team-b/p") == (0,)
    assert GpuInfo(0).holders == ()
