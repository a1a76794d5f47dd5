import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.gang import GangManager, GangPlan, GangRefusal, plan_gang, rank_members
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins import registry
from tests.builders import gpu_node, pod

CONFIG = registry.config_from(None)
FW = registry.build(CONFIG)


def racks(per_rack: int = 4, racks: int = 2, gpus: int = 8) -> list:
    return [
        gpu_node(
            f"r{r}-n{i}",
            gpus,
            labels={"network.topology.nvidia.com/leaf": f"r{r}", "network.topology.nvidia.com/spine": "b0"},
        )
        for r in range(racks)
        for i in range(per_rack)
    ]


def member(name: str, size: int, gpus: int = 8, rank: int | None = None, group: str = "g") -> PodRequest:
    labels = {"scheduling.x-k8s.io/pod-group": group}
    if rank is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(rank)
    return parse_pod(pod(name, gpus, {"gpusched.io/min-member": str(size)}, labels=labels))


def busy(node: str, gpus: list[int], name: str) -> PodRequest:
    return parse_pod(pod(name, len(gpus), node=node, gpuIds=gpus))


def test_gang_lands_whole_in_the_rack_that_holds_it() -> None:
    # Rack r0 has only 3 free nodes; r1 has all 4.
    snap = ClusterSnapshot(racks(), [busy("r0-n1", [0], "x")])
    plan = plan_gang(snap, FW, member("t", 4), 4)
    assert isinstance(plan, GangPlan)
    assert {s.node for s in plan.slots} == {"r1-n0", "r1-n1", "r1-n2", "r1-n3"}
    assert plan.span == "leaf switch"
    assert [s.rank for s in plan.slots] == [0, 1, 2, 3]
    # the default tiers' values, outermost first: zone, core, spine, leaf, accelerator, GKE block,
    # subblock, host, NVLink clique, hostname ("-": not labelled)
    assert plan.slots[0].path == "-/-/b0/r1/-/-/-/-/-/r1-n0"


def test_consecutive_ranks_share_a_node() -> None:
    snap = ClusterSnapshot(racks(per_rack=2, racks=1))
    plan = plan_gang(snap, FW, member("t", 4, gpus=4), 4)
    assert isinstance(plan, GangPlan)
    by_rank = {s.rank: s.node for s in plan.slots}
    assert by_rank[0] == by_rank[1] and by_rank[2] == by_rank[3] and by_rank[0] != by_rank[2]
    assert plan.span == "leaf switch"
    gpus = {s.rank: s.gpus for s in plan.slots}
    assert set(gpus[0]).isdisjoint(gpus[1])


def test_gang_that_fits_on_one_node_spans_only_that_node() -> None:
    snap = ClusterSnapshot(racks())
    plan = plan_gang(snap, FW, member("t", 2, gpus=4), 2)
    assert isinstance(plan, GangPlan) and plan.span == "node"


def test_partial_fit_is_refused_with_the_best_count() -> None:
    cfg = registry.config_from({"gang": {"maxSpanTier": "network.topology.nvidia.com/leaf"}})
    snap = ClusterSnapshot(racks(per_rack=3))
    result = plan_gang(snap, registry.build(cfg), member("t", 4), 4, max_span="network.topology.nvidia.com/leaf")
    assert isinstance(result, GangRefusal)
    assert result.reason == "gang of 4 x 8 GPUs does not fit in one leaf switch (best: 3)"
    # Across racks it fits.
    assert isinstance(plan_gang(snap, FW, member("t", 4), 4), GangPlan)


def test_refusal_in_the_whole_cluster() -> None:
    snap = ClusterSnapshot(racks(per_rack=1))
    result = plan_gang(snap, FW, member("t", 3), 3)
    assert isinstance(result, GangRefusal) and result.reason.endswith("does not fit in the cluster (best: 2)")


def test_ranks_declared_first_then_by_name() -> None:
    members = [member("c", 3), member("a", 3, rank=2), member("b", 3)]
    assert rank_members(members, 3) == {"default/a": 2, "default/b": 0, "default/c": 1}


class Clock:
    now = 1000.0


def manager(snap_nodes: list, ttl: float = 60.0) -> tuple[GangManager, ClusterSnapshot]:
    return GangManager(FW, ttl_s=ttl), ClusterSnapshot(snap_nodes)


def test_nothing_is_planned_or_held_until_every_member_exists() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1))
    first = member("w-0", 2, rank=0)
    adm = gm.admit(snap, first, [first], now=0)
    assert adm.slot is None and adm.unschedulable and not adm.resolvable
    assert "waiting for members (1 of 2 exist)" in adm.error
    assert snap.gpu_free_count().tolist() == [8, 8] and gm.reservations() == []
    second = member("w-1", 2, rank=1)
    adm = gm.admit(snap, second, [first, second], now=1)
    assert adm.slot is not None and adm.slot.rank == 1 and adm.reservation_key.endswith("gang:g:1")
    assert snap.gpu_free_count().tolist() == [0, 0]  # both nodes reserved for the gang


def test_two_gangs_that_cannot_both_fit_never_deadlock() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1), ttl=60)
    a = [member(f"a-{i}", 2, rank=i, group="a") for i in range(2)]
    b = [member(f"b-{i}", 2, rank=i, group="b") for i in range(2)]
    assert gm.admit(snap, a[0], a, now=0).slot is not None
    refused = gm.admit(snap, b[0], b, now=0)
    assert refused.slot is None and "does not fit" in refused.error
    # Gang a binds both members: its plan is done and b still waits for the GPUs to come back.
    gm.bound(a[0], 0)
    gm.bound(a[1], 1)
    assert gm.placed_total == 1 and gm.pending() == 0


def test_reservation_expires_without_progress_and_frees_the_gpus() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1), ttl=30)
    both = [member("x-0", 2, rank=0, group="x"), member("x-1", 2, rank=1, group="x")]
    gm.admit(snap, both[0], both, now=0)
    assert len(gm.reservations()) == 2
    gm.admit(snap, both[1], both, now=20)  # rank 1's first filter: progress
    gm.admit(snap, both[0], both, now=45)  # rank 0 again: no progress
    assert gm.expire(now=50) == 0  # 30 s after the last progress at 20
    assert gm.expire(now=51) == 1
    assert gm.reservations() == [] and gm.expired_total == 1


def test_reaching_bind_waits_for_every_rank_then_gives_them_all() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1))
    both = [member("x-0", 2, rank=0, group="x"), member("x-1", 2, rank=1, group="x")]
    gm.admit(snap, both[0], both, now=0)
    first = gm.reach_bind(both[0], 0, both, now=1)
    assert first.bind == () and "1 of 2 members ready to bind" in first.wait
    assert gm.reach_bind(both[0], 0, both, now=2).bind == ()  # again: still waiting
    last = gm.reach_bind(both[1], 1, both, now=3)
    assert last.bind == ((0, "default/x-0"), (1, "default/x-1"))
    # While those binds run, another member's call is told so; none is handed out twice.
    assert "being bound" in gm.reach_bind(both[0], 0, both, now=4).wait
    gm.made_durable(both[1])
    gm.bound(both[0], 0)
    gm.bound(both[1], 1)
    gm.binding_done(both[1])
    assert gm.placed_total == 1 and gm.pending() == 0 and gm.reservations() == []


def test_a_ready_member_that_was_deleted_must_come_again() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1))
    both = [member("x-0", 2, rank=0, group="x"), member("x-1", 2, rank=1, group="x")]
    gm.admit(snap, both[0], both, now=0)
    gm.reach_bind(both[0], 0, both, now=1)
    replacement = member("x-0b", 2, rank=0, group="x")  # the Job made a new pod for index 0
    members = [replacement, both[1]]
    assert gm.reach_bind(both[1], 1, members, now=2).bind == ()
    assert gm.reach_bind(replacement, 0, members, now=3).bind == ((0, "default/x-0b"), (1, "default/x-1"))


def test_a_durable_gang_never_expires_and_binds_each_member_as_it_comes() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1), ttl=30)
    both = [member("x-0", 2, rank=0, group="x"), member("x-1", 2, rank=1, group="x")]
    gm.admit(snap, both[0], both, now=0)
    gm.reach_bind(both[0], 0, both, now=1)
    gm.reach_bind(both[1], 1, both, now=2)
    gm.made_durable(both[0])
    gm.bound(both[0], 0)
    gm.binding_done(both[0])  # rank 1's Binding failed
    assert gm.expire(now=1000) == 0 and len(gm.reservations()) == 1
    assert gm.reach_bind(both[1], 1, both, now=1001).bind == ((1, "default/x-1"),)


def test_restart_mid_gang_keeps_bound_members_and_plans_the_rest_nearby() -> None:
    nodes = racks(per_rack=2, racks=2)
    labels = {"scheduling.x-k8s.io/pod-group": "m", "batch.kubernetes.io/job-completion-index": "0"}
    bound = parse_pod(pod("m-0", 8, {"gpusched.io/min-member": "2"}, node="r1-n0", labels=labels))
    snap = ClusterSnapshot(nodes, [bound])
    gm = GangManager(FW)
    second = member("m-1", 2, rank=1, group="m")
    adm = gm.admit(snap, second, [bound, second], now=0)
    assert adm.slot is not None and adm.slot.node == "r1-n1"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 2, 4, 8]), st.lists(st.integers(0, 7), max_size=6))
def test_a_plan_never_over_commits_a_gpu(size: int, gpus: int, held: list[int]) -> None:
    running = [busy("r0-n0", sorted(set(held)), "h")] if held else []
    snap = ClusterSnapshot(racks(per_rack=2), running)
    result = plan_gang(snap, FW, member("t", size, gpus=gpus), size)
    if isinstance(result, GangRefusal):
        return
    assert len(result.slots) == size
    taken: set[tuple[str, int]] = set()
    for slot in result.slots:
        assert len(slot.gpus) == gpus
        for g in slot.gpus:
            assert (slot.node, g) not in taken
            assert snap.gpu_milli_free[snap.index[slot.node], g] == 1000
            taken.add((slot.node, g))
    assert snap.over_committed() == [] and not any("probe" in k for k in snap.placements)


def test_member_without_min_member_is_told_why() -> None:
    gm, snap = manager(racks(per_rack=1, racks=1))
    p = parse_pod(pod("x", 8, labels={"scheduling.x-k8s.io/pod-group": "g"}))
    assert "min-member" in gm.admit(snap, p, [p], now=0).error


@pytest.mark.parametrize("extra", [3, 4])
def test_too_many_members_are_refused(extra: int) -> None:
    gm, snap = manager(racks(per_rack=4, racks=1))
    members = [member(f"y-{i}", 2) for i in range(extra)]
    adm = gm.admit(snap, members[-1], members, now=0)
    assert adm.slot is None and "more than 2 members" in adm.error


def test_a_member_asked_about_after_it_was_bound_gets_its_own_node_and_no_new_plan() -> None:
    nodes = racks(per_rack=2, racks=1)
    labels = {"scheduling.x-k8s.io/pod-group": "m", "batch.kubernetes.io/job-completion-index": "0"}
    bound = [
        parse_pod(
            pod(
                f"m-{r}",
                8,
                {"gpusched.io/min-member": "2"},
                node=f"r0-n{r}",
                gpuIds=list(range(8)),
                labels={**labels, "batch.kubernetes.io/job-completion-index": str(r)},
            )
        )
        for r in range(2)
    ]
    snap = ClusterSnapshot(nodes, bound)
    gm = GangManager(FW)
    adm = gm.admit(snap, bound[1], bound, now=0)
    assert adm.slot is not None and adm.slot.node == "r0-n1" and adm.slot.gpus == tuple(range(8))
    assert adm.reservation_key == "default/m-1" and gm.pending() == 0 and gm.reservations() == []


def test_a_gang_whose_pods_are_all_gone_is_let_go_even_when_partly_bound() -> None:
    gm, snap = manager(racks(per_rack=2, racks=1))
    both = [member("x-0", 2, rank=0, group="x"), member("x-1", 2, rank=1, group="x")]
    gm.admit(snap, both[0], both, now=0)
    gm.reach_bind(both[0], 0, both, now=1)
    gm.reach_bind(both[1], 1, both, now=2)
    gm.made_durable(both[0])
    gm.bound(both[0], 0)
    gm.binding_done(both[0])
    assert gm.prune(lambda key: key == "default/x-1") == 0  # one member left: kept
    assert gm.prune(lambda key: False) == 1 and gm.pending() == 0 and gm.reservations() == []
