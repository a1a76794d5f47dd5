from datetime import UTC, datetime

from scheduler.core.podspec import parse_pod
from scheduler.plugins import registry
from scheduler.state.store import ASSUME_TTL_S, ClusterState
from tests.builders import node_object, pod, report_object


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def state_with(nodes: int = 2) -> tuple[ClusterState, Clock]:
    clock = Clock()
    state = ClusterState(registry.config_from(None), clock=clock)
    state.replace_nodes([node_object(f"n{i}", gpus=4) for i in range(nodes)])
    return state, clock


def test_assumed_pod_holds_gpus_until_the_api_shows_it_bound() -> None:
    state, _ = state_with()
    p = parse_pod(pod("p", gpus=3))
    state.assume(p, "n0", (0, 1, 2))
    assert state.snapshot().gpu_free_count().tolist() == [1, 4]
    bound = pod("p", gpus=3, node="n0", gpuIds=[0, 1, 2])
    state.upsert_pod(bound)
    assert not state.assumed
    assert state.snapshot().gpu_free_count().tolist() == [1, 4]  # now held by the bound pod, once


def test_assumed_pod_expires_if_the_api_never_confirms() -> None:
    state, clock = state_with()
    state.assume(parse_pod(pod("p", gpus=4)), "n1", (0, 1, 2, 3))
    assert state.snapshot().gpu_free_count().tolist() == [4, 0]
    clock.now += ASSUME_TTL_S + 1
    assert state.snapshot().gpu_free_count().tolist() == [4, 4]


def test_finished_and_non_gpu_pods_hold_nothing() -> None:
    state, _ = state_with()
    done = pod("done", gpus=4, node="n0")
    done["status"] = {"phase": "Succeeded"}
    state.upsert_pod(done)
    state.upsert_pod(pod("cpu", gpus=0, node="n0"))
    assert state.snapshot().gpu_free_count().tolist() == [4, 4]
    assert state.pods == {}


def test_report_goes_stale_as_time_passes_without_any_change() -> None:
    state, clock = state_with(1)
    state.replace_reports([report_object("n0", gpus=4, reported_at=datetime.fromtimestamp(clock.now, UTC))])
    snap = state.snapshot()
    assert snap.has_report[0] and snap.report_age[0] < 1
    clock.now += 120
    snap = state.snapshot()
    assert snap.report_age[0] >= 119


def test_report_holders_are_the_truth_for_which_gpus_are_taken() -> None:
    state, _ = state_with(1)
    state.replace_reports([report_object("n0", gpus=4, holders={3: ["default/p"]})])
    state.upsert_pod(pod("p", gpus=1, node="n0", gpuIds=[0]))
    assert state.snapshot().placements["default/p"].gpus == (3,)


def test_deleting_a_node_or_pod_releases_it() -> None:
    state, _ = state_with()
    state.upsert_pod(pod("p", gpus=2, node="n0"))
    assert state.snapshot().gpu_free_count().tolist() == [2, 4]
    state.delete_pod(pod("p"))
    assert state.snapshot().gpu_free_count().tolist() == [4, 4]
    state.delete_node(node_object("n1"))
    assert state.snapshot().names == ["n0"]


def test_report_with_unreadable_time_is_stale() -> None:
    state, _ = state_with(1)
    report = report_object("n0", gpus=4)
    report["spec"]["reportTime"] = "yesterday-ish"
    state.replace_reports([report])
    assert state.snapshot().report_age[0] == float("inf")
