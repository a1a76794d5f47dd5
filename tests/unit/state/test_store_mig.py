"""ClusterState with MIG pods: the informers' pre-filter keeps them, and the snapshot counts their
instances as the report and the assume-cache say."""

from __future__ import annotations

from scheduler.core.podspec import parse_pod
from scheduler.plugins import registry
from scheduler.state.store import ClusterState
from tests.builders import mig_gpu, mig_pod, node_object, report_object, with_gpus


def state_with_mig(instances: list[tuple[str, list[str]]]) -> ClusterState:
    state = ClusterState(registry.config_from(None))
    state.replace_nodes([node_object("n", gpus=0)])
    state.replace_reports([with_gpus(report_object("n"), [mig_gpu(0, instances)])])
    return state


def test_mig_pods_pass_the_informers_pre_filter_and_hold_their_instance() -> None:
    state = state_with_mig([("1g.12gb", []), ("1g.12gb", [])])
    state.replace_pods([mig_pod("a", node="n"), mig_pod("pending")])
    assert sorted(state.pods) == ["default/a", "default/pending"]
    snap = state.snapshot()
    assert snap.placements["default/a"].mig == ("MIG-0-0",)
    assert snap.mig_free_of("1g.12gb").tolist() == [1]  # 2 instances - 1 held by a


def test_an_assumed_mig_pod_holds_an_instance_the_next_one_cannot_take() -> None:
    state = state_with_mig([("1g.12gb", []), ("1g.12gb", [])])
    state.assume(parse_pod(mig_pod("a")), "n", ())
    state.assume(parse_pod(mig_pod("b")), "n", ())
    snap = state.snapshot()
    assert {snap.placements[k].mig for k in ("default/a", "default/b")} == {("MIG-0-0",), ("MIG-0-1",)}
    assert snap.mig_free_of("1g.12gb").tolist() == [0] and snap.over_committed() == []


def test_the_report_moves_a_bound_mig_pod_to_the_instance_the_kubelet_gave_it() -> None:
    state = state_with_mig([("1g.12gb", []), ("1g.12gb", [])])
    state.upsert_pod(mig_pod("a", node="n"))
    assert state.snapshot().placements["default/a"].mig == ("MIG-0-0",)  # the first free, until told
    state.upsert_report(with_gpus(report_object("n"), [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", ["default/a"])])]))
    snap = state.snapshot()
    assert snap.placements["default/a"].mig == ("MIG-0-1",)
    assert snap.mig_free_of("1g.12gb").tolist() == [1]
    state.delete_pod(mig_pod("a", node="n"))
    # Deleted, but the report still names it on MIG-0-1 until the agent reports again.
    assert state.snapshot().mig_free_of("1g.12gb").tolist() == [1]
