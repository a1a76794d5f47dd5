from datetime import UTC, datetime

from scheduler.core.gang_sources import K8S_POD_GROUP, PLUGINS_POD_GROUP, k8s_pod_group_size, plugins_pod_group_size
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


def test_an_assumed_pod_is_held_until_its_bind_fails_or_has_no_known_outcome_for_the_ttl() -> None:
    state, clock = state_with()
    state.assume(parse_pod(pod("p", gpus=4)), "n1", (0, 1, 2, 3))
    clock.now += 10 * ASSUME_TTL_S  # a bind under way, or done and the informer late: held
    assert state.snapshot().gpu_free_count().tolist() == [4, 0]
    state.bind_outcome_unknown("default/p")  # the call ended without an answer: the TTL starts now
    clock.now += ASSUME_TTL_S - 1
    assert state.snapshot().gpu_free_count().tolist() == [4, 0]
    clock.now += 2
    assert state.snapshot().gpu_free_count().tolist() == [4, 4] and state.assumed == {}
    state.assume(parse_pod(pod("q", gpus=4)), "n1", (0, 1, 2, 3))
    state.forget_assumed("default/q")  # the API refused the bind
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
    snap = state.snapshot()
    assert snap.report_age[0] == float("inf")


def lease(node: str, renewed: datetime) -> dict[str, object]:
    return {
        "metadata": {"name": node, "namespace": "gpusched-system"},
        "spec": {"holderIdentity": f"gpusched-agent/{node}", "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    }


def test_the_agents_lease_keeps_an_unchanged_report_fresh() -> None:
    state, clock = state_with(2)
    written = datetime.fromtimestamp(clock.now, UTC)
    state.replace_reports([report_object(f"n{i}", gpus=4, reported_at=written) for i in range(2)])
    state.replace_leases([lease("n0", written), lease("n1", written)])
    for _ in range(4):  # two minutes: only n0's agent renews its Lease, every 30 s
        clock.now += 30
        state.upsert_lease(lease("n0", datetime.fromtimestamp(clock.now, UTC)))
    ages = state.snapshot().report_age.tolist()
    assert ages == [0.0, 120.0]  # n0 renewed just now; n1 last seen alive at the relist, 120 s ago
    assert state.snapshot().earliest_report_time() == clock.now - 120.0  # kept through the renewals
    assert state.rebuilds == 1  # renewals touch no node's rows


def test_a_node_clock_ahead_does_not_keep_a_dead_agent_fresh() -> None:
    state, clock = state_with(1)
    state.replace_reports([])
    ahead = datetime.fromtimestamp(clock.now + 3600, UTC)  # the node's clock runs an hour ahead
    state.upsert_report(report_object("n0", gpus=4, reported_at=ahead))
    assert state.snapshot().report_age.tolist() == [0.0]
    clock.now += 100  # the agent died after that write
    assert state.snapshot().report_age.tolist() == [100.0]  # stale past a 90 s TTL, whatever reportTime says


def test_a_relist_dates_reports_by_their_time_but_never_in_the_future() -> None:
    state, clock = state_with(2)
    clock.now = float(int(clock.now))  # reportTime has whole seconds
    past = datetime.fromtimestamp(clock.now - 40, UTC)
    ahead = datetime.fromtimestamp(clock.now + 600, UTC)
    state.replace_reports(
        [report_object("n0", gpus=4, reported_at=past), report_object("n1", gpus=4, reported_at=ahead)]
    )
    assert state.snapshot().report_age.tolist() == [40.0, 0.0]


def test_a_node_recreated_under_the_same_name_starts_without_the_old_report() -> None:
    state, clock = state_with(1)
    state.upsert_report(report_object("n0", gpus=4, reported_at=datetime.fromtimestamp(clock.now, UTC)))
    assert state.snapshot().has_report.tolist() == [True]
    state.delete_node(node_object("n0", gpus=4))
    state.upsert_node(node_object("n0", gpus=4))
    snap = state.snapshot()
    assert snap.has_report.tolist() == [False] and snap.report_age.tolist() == [float("inf")]


def test_a_kubelet_contradicting_the_annotation_is_counted_once_and_forgotten_with_the_pod() -> None:
    state, _ = state_with(1)
    state.upsert_pod(pod("p", gpus=1, node="n0", gpuIds=[0]))
    state.replace_reports([report_object("n0", gpus=4, holders={3: ["default/p"]})])
    assert state.snapshot().placements["default/p"].gpus == (3,)
    assert state.gpu_assignments.total == 1
    # A changed report (its node's pods placed again) and a relist (a new snapshot): still one.
    state.upsert_report(report_object("n0", gpus=4, holders={3: ["default/p"]}, cuda="12.5"))
    state.replace_pods([pod("p", gpus=1, node="n0", gpuIds=[0])])
    assert state.snapshot().placements["default/p"].gpus == (3,)
    assert state.gpu_assignments.total == 1
    state.delete_pod(pod("p"))
    assert state.gpu_assignments.disagreements == {}
    assert state.gpu_assignments.total == 1


def podgroup(name: str, min_member: int, namespace: str = "default") -> dict[str, object]:
    """A scheduler-plugins PodGroup (scheduling.x-k8s.io/v1alpha1)."""
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"minMember": min_member}}


def test_pods_take_their_gang_size_from_the_pod_group_whenever_it_arrives_or_changes() -> None:
    state, _ = state_with()
    labels = {"scheduling.x-k8s.io/pod-group": "train"}
    state.replace_pods([pod("a", gpus=4, labels=labels), pod("b", gpus=4, labels=labels)])
    assert [p.min_member for p in state.pods.values()] == [0, 0]  # no PodGroup yet: they wait
    # The PodGroup listed after its pods: both members take its size, and decisions see it.
    generation = state.generation
    state.replace_group_sizes(PLUGINS_POD_GROUP, [podgroup("train", 2)], plugins_pod_group_size)
    assert [p.min_member for p in state.pods.values()] == [2, 2]
    assert state.generation > generation
    # A member created now is parsed with it, as is the pod a verb is asked about.
    state.upsert_pod(pod("c", gpus=4, labels=labels))
    assert state.pods["default/c"].min_member == 2
    assert state.parse_pod(pod("d", gpus=4, labels=labels)).min_member == 2
    # Changed, then deleted: the members follow.
    state.upsert_group_size(PLUGINS_POD_GROUP, podgroup("train", 3), plugins_pod_group_size)
    assert {p.min_member for p in state.pods.values()} == {3}
    state.delete_group_size(PLUGINS_POD_GROUP, podgroup("train", 3))
    assert {p.min_member for p in state.pods.values()} == {0}


def test_a_pod_group_of_another_namespace_or_api_gives_no_size() -> None:
    state, _ = state_with()
    state.replace_pods([pod("a", gpus=4, labels={"scheduling.x-k8s.io/pod-group": "train"})])
    state.replace_group_sizes(PLUGINS_POD_GROUP, [podgroup("train", 2, namespace="other")], plugins_pod_group_size)
    native = {
        "metadata": {"name": "train", "namespace": "default"},
        "spec": {"schedulingPolicy": {"gang": {"minCount": 5}}},
    }
    state.replace_group_sizes(K8S_POD_GROUP, [native], k8s_pod_group_size)
    assert state.pods["default/a"].min_member == 0
    # A relist of one API keeps the other's sizes.
    state.replace_group_sizes(PLUGINS_POD_GROUP, [], plugins_pod_group_size)
    assert state.group_sizes == {("default", "scheduling.k8s.io/train"): 5}


def test_a_pod_is_parsed_again_only_when_its_version_changes() -> None:
    state, _ = state_with()

    def version(gpus: int, uid: str = "u1", resource_version: str | None = "7") -> dict[str, object]:
        obj = pod("p", gpus=gpus)
        obj["metadata"]["uid"] = uid
        if resource_version is not None:
            obj["metadata"]["resourceVersion"] = resource_version
        return obj

    first = state.parse_pod(version(1))
    # Same uid and resourceVersion: the same object, whatever the body says (the API never does that).
    assert state.parse_pod(version(2)) is first
    assert state.parse_pod(version(2, resource_version="8")).gpu_count == 2  # a new version
    assert state.parse_pod(version(4, uid="u2", resource_version="8")).gpu_count == 4  # another pod
    # Without a resourceVersion (a hand-written request) every body is read.
    assert state.parse_pod(version(1, resource_version=None)).gpu_count == 1
    assert state.parse_pod(version(3, resource_version=None)).gpu_count == 3
