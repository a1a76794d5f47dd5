"""MIG in the core: the report's MIG state parsed (objects.py), MIG resources parsed (podspec.py),
and MIG instances counted and held in the snapshot (snapshot.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot, SnapshotError
from scheduler.core.types import MigInfo
from tests.builders import mig_gpu, mig_pod, pod, reported_node, whole_gpu


# ----------------------------------------------------------------- the report's MIG state
def test_the_reports_mig_state_reaches_the_node() -> None:
    entry = mig_gpu(0, [("1g.12gb", ["default/a"]), ("3g.40gb", [])])
    entry["migInstances"].append({"uuid": "MIG-0-nameless"})  # no profile: cannot be asked for
    entry["migInstances"].append({"profile": "1g.12gb"})  # no uuid: cannot be told apart
    state = reported_node("n", [entry, whole_gpu(1)])
    mig, plain = state.gpus
    assert mig.mig_enabled and not plain.mig_enabled
    assert mig.mig == (
        MigInfo("MIG-0-0", "1g.12gb", 12 * 10**9, ("default/a",)),
        MigInfo("MIG-0-1", "3g.40gb", 40 * 10**9, ()),
    )
    assert plain.mig == ()


def test_instances_of_a_gpu_whose_mig_mode_is_off_are_ignored() -> None:
    entry = {**mig_gpu(0, [("1g.12gb", [])]), "migEnabled": False}
    (gpu,) = reported_node("n", [entry]).gpus
    assert not gpu.mig_enabled and gpu.mig == ()


# ----------------------------------------------------------------- MIG resources of a pod
def resources(*containers: dict[str, str], init: tuple[dict[str, str], ...] = ()) -> dict[str, Any]:
    obj = pod("p", gpus=0)
    obj["spec"]["containers"] = [{"name": f"c{i}", "resources": {"limits": c}} for i, c in enumerate(containers)]
    obj["spec"]["initContainers"] = [{"name": f"i{i}", "resources": {"limits": c}} for i, c in enumerate(init)]
    return obj


MIG1 = "nvidia.com/mig-1g.12gb"
MIG3 = "nvidia.com/mig-3g.40gb"


@pytest.mark.parametrize(
    ("obj", "profile", "count", "errors"),
    [
        pytest.param(resources({MIG1: "1"}), "1g.12gb", 1, (), id="one instance"),
        pytest.param(resources({MIG1: "1"}, {MIG1: "2"}), "1g.12gb", 3, (), id="containers add up: 1 + 2 = 3"),
        pytest.param(
            resources({MIG1: "1"}, init=({MIG1: "2"},)),
            "1g.12gb",
            2,
            (),
            id="init container: max(1, 2)",
        ),
        pytest.param(resources({"cpu": "1"}), "", 0, (), id="no MIG resource"),
        pytest.param(resources({MIG1: "0"}), "", 0, (), id="zero instances ask for nothing"),
        pytest.param(
            resources({MIG1: "1"}, {MIG3: "1"}),
            "",
            0,
            ("asks for MIG instances of 2 profiles (1g.12gb, 3g.40gb); one per pod",),
            id="two profiles",
        ),
        pytest.param(
            resources({MIG1: "1", "nvidia.com/gpu": "1"}),
            "1g.12gb",
            1,
            ("asks for whole GPUs and MIG instances (nvidia.com/mig-1g.12gb); one kind per pod",),
            id="whole GPUs too",
        ),
        pytest.param(
            resources({MIG1: "lots"}),
            "",
            0,
            ("containers[c0] nvidia.com/mig-1g.12gb: ",),
            id="a count that is no quantity",
        ),
    ],
)
def test_mig_resources_are_read_per_profile(
    obj: dict[str, Any], profile: str, count: int, errors: tuple[str, ...]
) -> None:
    parsed = parse_pod(obj)
    assert (parsed.mig_profile, parsed.mig_count) == (profile, count)
    assert len(parsed.errors) == len(errors)
    for got, want in zip(parsed.errors, errors, strict=True):
        assert got.startswith(want), got
    assert parsed.wants_mig == (count > 0)


def test_a_share_with_mig_instances_is_an_error() -> None:
    parsed = parse_pod(mig_pod("p", annotations={"gpusched.io/gpu-milli": "500"}))
    assert parsed.errors == (
        "annotation gpusched.io/gpu-milli asks for a GPU share but the pod also asks for MIG instances",
    )


def test_a_gang_member_asking_for_mig_instances_is_an_error() -> None:
    parsed = parse_pod(mig_pod("w-0", labels={"scheduling.x-k8s.io/pod-group": "train"}))
    assert parsed.errors == ("gang train: a gang member cannot ask for MIG instances (nvidia.com/mig-1g.12gb)",)


# ----------------------------------------------------------------- the snapshot
@pytest.mark.parametrize(
    ("gpus", "free", "total", "valid"),
    [
        pytest.param(
            [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", ["default/a"]), ("3g.40gb", [])]), whole_gpu(1)],
            {"1g.12gb": 1, "3g.40gb": 1},  # 1g: 2 instances - 1 the report says is held = 1
            {"1g.12gb": 2, "3g.40gb": 1},
            [False, True],  # the MIG-enabled GPU is no whole GPU
            id="one MIG GPU, one whole",
        ),
        pytest.param(
            [mig_gpu(0, [("1g.12gb", [])]), mig_gpu(1, [("1g.12gb", [])], healthy=False)],
            {"1g.12gb": 1},  # GPU 1 unhealthy: its instance is neither free nor counted
            {"1g.12gb": 1},
            [False, False],
            id="an unhealthy GPU's instances do not count",
        ),
        pytest.param([whole_gpu(0), whole_gpu(1)], {}, {}, [True, True], id="no MIG"),
    ],
)
def test_snapshot_counts_instances_per_profile(
    gpus: list[dict[str, Any]], free: dict[str, int], total: dict[str, int], valid: list[bool]
) -> None:
    snap = ClusterSnapshot([reported_node("n", gpus, allocatable_gpus=sum(valid))])
    assert {p: int(a[0]) for p, a in snap.mig_free.items()} == free
    assert {p: int(a[0]) for p, a in snap.mig_total.items() if a[0]} == total
    assert snap.gpu_valid[0].tolist() == valid
    assert snap.gpu_mig[0].tolist() == [not v for v in valid]
    assert snap.gpu_free_count()[0] == sum(valid)


def test_two_mig_pods_never_share_an_instance() -> None:
    snap = ClusterSnapshot([reported_node("n", [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", []), ("3g.40gb", [])])])])
    a = snap.place(parse_pod(mig_pod("a")), 0)
    b = snap.place(parse_pod(mig_pod("b")), 0)
    assert (a.mig, b.mig) == (("MIG-0-0",), ("MIG-0-1",))
    assert snap.mig_free_of("1g.12gb")[0] == 0  # 2 instances - 2 held
    with pytest.raises(SnapshotError, match=r"has 0 of 1 MIG 1g\.12gb instances free"):
        snap.place(parse_pod(mig_pod("c")), 0)
    with pytest.raises(SnapshotError, match="MIG-0-0 of node n is held by default/a"):
        snap.place(parse_pod(mig_pod("c")), 0, mig=["MIG-0-0"])
    with pytest.raises(SnapshotError, match=r"has no MIG 1g\.12gb instance MIG-0-2"):
        snap.place(parse_pod(mig_pod("c")), 0, mig=["MIG-0-2"])  # a 3g.40gb instance
    snap.remove("default/a")
    assert snap.place(parse_pod(mig_pod("c")), 0).mig == ("MIG-0-0",)
    assert snap.over_committed() == []


def test_a_bound_mig_pod_is_counted_on_the_instance_the_report_names() -> None:
    # The report says z holds the first instance; a, placed first (sorted keys), must not take it.
    gpus = [mig_gpu(0, [("1g.12gb", ["default/z"]), ("1g.12gb", [])])]
    snap = ClusterSnapshot(
        [reported_node("n", gpus)], [parse_pod(mig_pod("a", node="n")), parse_pod(mig_pod("z", node="n"))]
    )
    assert snap.placements["default/a"].mig == ("MIG-0-1",)
    assert snap.placements["default/z"].mig == ("MIG-0-0",)
    assert snap.conflicts == {} and snap.mig_free_of("1g.12gb")[0] == 0  # 2 - 1 reported - 1 placed


def test_a_pod_on_an_unhealthy_gpus_instance_keeps_it_and_no_count_goes_negative() -> None:
    # GPU 0 unhealthy: its instance is not offered, but the pod the kubelet put there still holds it.
    gpus = [mig_gpu(0, [("1g.12gb", ["default/a"])], healthy=False), mig_gpu(1, [("1g.12gb", [])])]
    snap = ClusterSnapshot([reported_node("n", gpus)], [parse_pod(mig_pod("a", node="n"))])
    assert snap.placements["default/a"].mig == ("MIG-0-0",)
    assert snap.mig_free_of("1g.12gb")[0] == 1  # GPU 1's instance only
    snap.remove("default/a")
    assert snap.mig_free_of("1g.12gb")[0] == 1 and snap.over_committed() == []
    assert snap.place(parse_pod(mig_pod("b")), 0).mig == ("MIG-1-0",)  # never the unhealthy GPU's


def test_a_third_bound_mig_pod_without_room_is_a_conflict_not_a_negative_count() -> None:
    gpus = [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", [])])]
    pods = [parse_pod(mig_pod(name, node="n")) for name in "abc"]
    snap = ClusterSnapshot([reported_node("n", gpus)], pods)
    assert sorted(snap.placements) == ["default/a", "default/b"]
    assert snap.conflicts["default/c"] == "default/c: node n has 0 of 1 MIG 1g.12gb instances free"
    assert snap.mig_free_of("1g.12gb")[0] == 0 and snap.over_committed() == []


def test_a_node_reload_moves_the_pod_to_the_instance_the_kubelet_names() -> None:
    before = [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", [])])]
    snap = ClusterSnapshot([reported_node("n", before)], [parse_pod(mig_pod("a", node="n"))])
    assert snap.placements["default/a"].mig == ("MIG-0-0",)
    after = [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", ["default/a"])])]
    assert snap.update_node(0, reported_node("n", after))
    assert snap.placements["default/a"].mig == ("MIG-0-1",)
    assert snap.mig_free_of("1g.12gb")[0] == 1  # 2 - 1 the report names (a's own)
    fresh = ClusterSnapshot([reported_node("n", after)], [parse_pod(mig_pod("a", node="n"))])
    assert fresh.mig_free_of("1g.12gb")[0] == 1 and fresh.placements["default/a"].mig == ("MIG-0-1",)


def test_without_gives_a_mig_pod_its_own_instance_back() -> None:
    gpus = [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", [])])]
    snap = ClusterSnapshot([reported_node("n", gpus)])
    snap.place(parse_pod(mig_pod("a")), 0, mig=["MIG-0-1"])
    with snap.without(["default/a"]):
        assert snap.mig_free_of("1g.12gb")[0] == 2
    assert snap.placements["default/a"].mig == ("MIG-0-1",) and snap.mig_free_of("1g.12gb")[0] == 1


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(1, 2)), max_size=30),
    reported=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_instances_are_never_held_twice_and_free_counts_stay_exact(
    steps: list[tuple[bool, int, int]], reported: list[bool]
) -> None:
    """Any sequence of MIG pods placed and removed: each instance has one holder at most, and the
    free count equals the instances that are on the node, not reported held and not placed."""
    instances = [("1g.12gb", ["default/outsider"] if r else []) for r in reported]
    snap = ClusterSnapshot([reported_node("n", [mig_gpu(0, instances)])])
    for place, who, count in steps:
        key = f"default/p{who}"
        if place:
            try:
                snap.place(parse_pod(mig_pod(f"p{who}", count=count)), 0)
            except SnapshotError:
                assert snap.mig_free_of("1g.12gb")[0] < count
        else:
            snap.remove(key)
        held = [u for p in snap.placements.values() for u in p.mig]
        assert len(held) == len(set(held))
        assert not set(held) & {f"MIG-0-{i}" for i, r in enumerate(reported) if r}
        assert snap.mig_free_of("1g.12gb")[0] == reported.count(False) - len(held)
