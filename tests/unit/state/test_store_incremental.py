"""ClusterState updates its snapshot in place: after any sequence of informer events, binds and
reservations, the snapshot equals one built from scratch (a relist of the same objects).

Equality is exact for every per-node array and table. GPU ids are compared exactly for pods whose
GPUs are named (by the kubelet's report, or by gpusched at bind); a pod bound by someone else with
no GPU named takes "the first free ones", which depends on the order pods arrived, so for nodes
with such pods the free shares are compared as a multiset (sorted per node).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins import registry
from scheduler.state.store import ClusterState
from tests.builders import mig_gpu, mig_pod, node_object, pod, report_object

NODES = ("n0", "n1", "n2")
PODS = ("a", "b", "c", "zeta", "zz")  # some sort after a gang hold's name ("gang:g:0")
T0 = datetime(2026, 11, 30, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 10

    def __call__(self) -> float:
        return self.now


class World:
    """The objects the API holds, and the ClusterState fed with their events as they happen."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.config = registry.config_from(None)
        self.state = ClusterState(self.config, clock=self.clock)
        self.nodes: dict[str, dict[str, Any]] = {n: node_object(n, gpus=4) for n in NODES}
        self.reports: dict[str, dict[str, Any]] = {n: self.report(n, {}) for n in NODES}
        self.pods: dict[str, dict[str, Any]] = {}
        self.reservations: list[PodRequest] = []
        self.state.reservations = lambda: list(self.reservations)
        self.state.replace_nodes(list(self.nodes.values()))
        self.state.replace_reports(list(self.reports.values()))
        self.state.replace_pods([])
        self.state.snapshot()

    def report(
        self,
        node: str,
        holders: dict[int, list[str]],
        healthy: bool = True,
        images: int = 0,
        mig: list[list[str]] | None = None,
    ) -> dict[str, Any]:
        """`mig`: GPU 0 is MIG-enabled, with one 1g.12gb instance per entry (the pods holding it)."""
        obj = report_object(node, gpus=4, holders=holders, reported_at=datetime.fromtimestamp(self.clock.now, UTC))
        obj["spec"]["gpus"][3]["healthy"] = healthy
        if mig is not None:
            obj["spec"]["gpus"][0] = mig_gpu(0, [("1g.12gb", held) for held in mig])
        obj["spec"]["images"] = [{"name": f"img-{i}:1", "bytes": 1000 * (i + 1)} for i in range(images)]
        return obj


def _sorted_free(snap: ClusterSnapshot, i: int) -> list[int]:
    return sorted(snap.gpu_milli_free[i].tolist())


def assert_same(live: ClusterSnapshot, fresh: ClusterSnapshot) -> None:
    assert live.names == fresh.names
    # The earliest report time, kept through every write, is the earliest of the times
    assert live.earliest_report_time() == float(live.report_time.min(initial=np.inf))
    for name in (
        "gpu_valid",
        "gpu_mig",
        "gpu_healthy",
        "gpu_memory",
        "link_affinity",
        "gpu_alloc",
        "gpu_used_api",
        "cpu_free",
        "memory_free",
        "cuda",
        "has_report",
        "report_age",
        "ready",
        "pull_bw",
        "download_bw",
        "disk_bw",
    ):
        assert np.array_equal(getattr(live, name), getattr(fresh, name)), name
    models = [[live.model_names[m] if m >= 0 else m for m in row] for row in live.gpu_model.tolist()]
    assert models == [[fresh.model_names[m] if m >= 0 else m for m in row] for row in fresh.gpu_model.tolist()]
    # Ids are numbered as they appear; the partition of nodes they describe must be the same.
    for name in ("tier_ids", "link_class"):
        a, b = getattr(live, name).reshape(len(live), -1), getattr(fresh, name).reshape(len(fresh), -1)
        for col in range(a.shape[1]):
            pairs = set(zip(a[:, col].tolist(), b[:, col].tolist(), strict=True))
            assert len(pairs) == len(set(a[:, col].tolist())) == len(set(b[:, col].tolist())), name
    assert (live.images, live.models, live.lora_adapters) == (fresh.images, fresh.models, fresh.lora_adapters)
    assert (live.serving, live.owner_pods) == (fresh.serving, fresh.owner_pods)
    assert live.pods == fresh.pods
    for name in ("mig_free", "mig_total"):  # a profile no node has any more may keep a row of zeros
        counts = [{p: a.tolist() for p, a in getattr(snap, name).items() if a.any()} for snap in (live, fresh)]
        assert counts[0] == counts[1], name
    for key, placed in fresh.placements.items():
        if fresh.kubelet_migs(placed.node, key):  # named by the report: exactly there
            assert live.placements[key].mig == placed.mig, key
    assert set(live.conflicts) == set(fresh.conflicts)
    assert {k: p.node for k, p in live.placements.items()} == {k: p.node for k, p in fresh.placements.items()}
    anonymous = {
        p.node
        for k, p in fresh.placements.items()
        if not (fresh.kubelet_gpus(p.node, k) or fresh.pods[k].gpu_ids) and fresh.pods[k].wants_gpu
    }
    for i in range(len(live)):
        if i in anonymous:
            assert _sorted_free(live, i) == _sorted_free(fresh, i), live.names[i]
        else:
            assert live.gpu_milli_free[i].tolist() == fresh.gpu_milli_free[i].tolist(), live.names[i]
            for key in live.node_pods[i]:
                assert live.placements[key].gpus == fresh.placements[key].gpus, key


def rebuilt(world: World) -> ClusterSnapshot:
    """A ClusterState that relists the same objects, with the same assumed pods and reservations."""
    state = ClusterState(world.config, clock=world.clock)
    state.reservations = lambda: list(world.reservations)
    state.replace_nodes(copy.deepcopy(list(world.nodes.values())))
    state.replace_reports(copy.deepcopy(list(world.reports.values())))
    state.replace_pods(copy.deepcopy(list(world.pods.values())))
    for assumed, deadline in world.state.assumed.values():
        state.assume(assumed, assumed.node_name, assumed.gpu_ids)
        state.assumed[assumed.key] = (state.assumed[assumed.key][0], deadline)
    state._taken_over = dict(world.state._taken_over)
    return state.snapshot()


# ------------------------------------------------------------------- events
Event = Callable[[World], None]


def create_pod(name: str, gpus: int, milli: int) -> Event:
    def run(w: World) -> None:
        annotations = {"gpusched.io/gpu-milli": str(milli)} if milli else {}
        w.pods[name] = pod(name, gpus=0 if milli else gpus, annotations=annotations)
        w.state.upsert_pod(copy.deepcopy(w.pods[name]))

    return run


def create_mig_pod(name: str) -> Event:
    def run(w: World) -> None:
        w.pods[name] = mig_pod(name)
        w.state.upsert_pod(copy.deepcopy(w.pods[name]))

    return run


def free_now(w: World, node: str, gpus: tuple[int, ...], milli: int = 1000) -> bool:
    """Whether gpusched would see these GPUs free: it binds and reserves only GPUs it sees free."""
    snap = w.state.snapshot()
    at = snap.index.get(node)
    return at is not None and all(g < snap.max_gpus and snap.gpu_milli_free[at, g] >= milli for g in gpus)


def fits_by_count(w: World, node: str, pod_request: PodRequest) -> bool:
    snap = w.state.snapshot()
    at = snap.index.get(node)
    if at is None:
        return False
    if pod_request.wants_mig:  # kube-scheduler counts the node's instances of the profile
        return bool(snap.mig_free_of(pod_request.mig_profile)[at] >= pod_request.mig_count)
    with snap.without(list(w.state._placed_reservations)):
        found = snap.first_free_gpus(at, pod_request.gpus_needed, pod_request.milli_per_gpu)
    return len(found) == pod_request.gpus_needed


def bind_pod(name: str, node: str, gpu_ids: tuple[int, ...] | None) -> Event:
    """The API shows the pod bound: by gpusched, with GPUs it saw free, or by someone else, without."""

    def run(w: World) -> None:
        if name not in w.pods or w.pods[name]["spec"]["nodeName"]:
            return
        obj = w.pods[name]
        pod_request = parse_pod(obj)
        ids = gpu_ids[: pod_request.gpus_needed] if gpu_ids is not None else None
        if ids is not None and (
            len(ids) < pod_request.gpus_needed or not free_now(w, node, ids, pod_request.milli_per_gpu)
        ):
            ids = None
        if ids is None and not fits_by_count(w, node, pod_request):
            return  # another scheduler binds only where the pod fits (it knows nothing of reservations)
        obj["spec"]["nodeName"] = node
        if ids is not None:
            obj["metadata"]["annotations"]["gpusched.io/gpu-ids"] = ",".join(map(str, ids))
        w.state.upsert_pod(copy.deepcopy(obj))

    return run


def assume_pod(name: str, node: str, gpus: tuple[int, ...]) -> Event:
    def run(w: World) -> None:
        if name in w.pods and not w.pods[name]["spec"]["nodeName"]:
            pod_request = parse_pod(w.pods[name])
            chosen = gpus[: pod_request.gpus_needed]
            if len(chosen) == pod_request.gpus_needed and free_now(w, node, chosen, pod_request.milli_per_gpu):
                w.state.assume(pod_request, node, chosen)

    return run


def forget_assumed(name: str) -> Event:
    return lambda w: w.state.forget_assumed(f"default/{name}")


def delete_pod(name: str) -> Event:
    def run(w: World) -> None:
        obj = w.pods.pop(name, None)
        if obj is not None:
            w.state.delete_pod(obj)

    return run


def finish_pod(name: str) -> Event:
    def run(w: World) -> None:
        obj = w.pods.pop(name, None)
        if obj is not None:
            obj["status"] = {"phase": "Succeeded"}
            w.state.upsert_pod(obj)

    return run


def heartbeat(node: str) -> Event:
    def run(w: World) -> None:
        w.clock.now += 5
        if node not in w.reports:
            return
        w.reports[node]["spec"]["reportTime"] = datetime.fromtimestamp(w.clock.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        w.state.upsert_report(copy.deepcopy(w.reports[node]))

    return run


def new_report(node: str, holder: str | None, gpu: int, healthy: bool, images: int, mig: bool = False) -> Event:
    """The agent reports a change: who holds a GPU (per the kubelet), a GPU's health, cached images;
    with `mig`, GPU 0 is split into two 1g.12gb instances and the holder holds instance gpu % 2."""

    def run(w: World) -> None:
        holders = {gpu: [f"default/{holder}"]} if holder else {}
        instances = None
        if mig:
            instances = [[f"default/{holder}"] if holder and gpu % 2 == i else [] for i in range(2)]
            holders.pop(0, None)
        w.reports[node] = w.report(node, holders, healthy, images, instances)
        w.state.upsert_report(copy.deepcopy(w.reports[node]))

    return run


def drop_report(node: str) -> Event:
    def run(w: World) -> None:
        obj = w.reports.pop(node, None)
        if obj is not None:
            w.state.delete_report(obj)

    return run


def relabel_node(node: str, rack: str, cpu: str) -> Event:
    def run(w: World) -> None:
        if node in w.nodes:
            w.nodes[node]["metadata"]["labels"]["network.topology.nvidia.com/leaf"] = rack
            w.nodes[node]["status"]["allocatable"]["cpu"] = cpu
            w.state.upsert_node(copy.deepcopy(w.nodes[node]))

    return run


def set_allocatable(node: str, gpus: int) -> Event:
    """The Node's allocatable GPUs change (the device plugin restarts, or withdraws a GPU)."""

    def run(w: World) -> None:
        if node in w.nodes:
            w.nodes[node]["status"]["allocatable"]["nvidia.com/gpu"] = str(gpus)
            w.state.upsert_node(copy.deepcopy(w.nodes[node]))

    return run


def add_node(name: str, gpus: int) -> Event:
    def run(w: World) -> None:
        w.nodes[name] = node_object(name, gpus=gpus)
        w.state.upsert_node(copy.deepcopy(w.nodes[name]))

    return run


def delete_node(name: str) -> Event:
    def run(w: World) -> None:
        obj = w.nodes.pop(name, None)
        if obj is not None:
            w.state.delete_node(obj)

    return run


def reserve(node: str, gpus: tuple[int, ...]) -> Event:
    """A gang plan reserves GPUs it sees free; the manager places them in the snapshot at once."""

    def run(w: World) -> None:
        w.reservations = []
        w.state.mark_changed()
        if free_now(w, node, gpus):
            w.reservations = [PodRequest("default", "gang:g:0", gpu_count=len(gpus), node_name=node, gpu_ids=gpus)]
            w.state.mark_changed()
            w.state.snapshot()

    return run


def unreserve() -> Event:
    def run(w: World) -> None:
        w.reservations = []
        w.state.mark_changed()

    return run


names = st.sampled_from(PODS)
nodes = st.sampled_from(NODES)
gpu_sets = st.sampled_from([(0,), (1,), (2, 3), (0, 1, 2, 3)])
events = st.one_of(
    st.builds(create_pod, names, st.sampled_from([1, 2]), st.sampled_from([0, 0, 300, 700])),
    st.builds(create_mig_pod, names),
    st.builds(bind_pod, names, nodes, st.one_of(st.none(), gpu_sets)),
    st.builds(assume_pod, names, nodes, gpu_sets),
    st.builds(forget_assumed, names),
    st.builds(delete_pod, names),
    st.builds(finish_pod, names),
    st.builds(heartbeat, nodes),
    st.builds(
        new_report,
        nodes,
        st.one_of(st.none(), names),
        st.integers(0, 3),
        st.booleans(),
        st.integers(0, 2),
        st.booleans(),
    ),
    st.builds(drop_report, nodes),
    st.builds(relabel_node, nodes, st.sampled_from(["r1", "r2"]), st.sampled_from(["64", "128"])),
    st.builds(add_node, st.sampled_from(["n3", "n4"]), st.sampled_from([2, 4])),
    st.builds(set_allocatable, nodes, st.sampled_from([0, 2, 4])),
    st.builds(delete_node, st.sampled_from(["n2", "n3"])),
    st.builds(reserve, nodes, gpu_sets),
    st.just(unreserve()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, min_size=1, max_size=30), st.lists(st.booleans(), min_size=30, max_size=30))
def test_incremental_snapshot_equals_a_rebuilt_one(steps: list[Event], reads: list[bool]) -> None:
    world = World()
    for step, read in zip(steps, reads, strict=False):
        step(world)
        if read:  # decisions read the snapshot between events: the in-place path is exercised
            assert_same(world.state.snapshot(), rebuilt(world))
    assert_same(world.state.snapshot(), rebuilt(world))


def test_a_heartbeat_moves_only_the_report_time() -> None:
    world = World()
    generation, rebuilds = world.state.generation, world.state.rebuilds
    heartbeat("n0")(world)
    snap = world.state.snapshot()
    assert (world.state.generation, world.state.rebuilds) == (generation, rebuilds)
    assert snap.report_age.tolist() == [0.0, 5.0, 5.0]  # n0 just reported; the others 5 s ago


def test_a_bind_updates_the_snapshot_in_place() -> None:
    world = World()
    before = world.state.snapshot()
    create_pod("a", 2, 0)(world)
    bind_pod("a", "n1", (2, 3))(world)
    after = world.state.snapshot()
    assert after is before and world.state.rebuilds == 1  # the one build at the first read
    assert after.gpu_milli_free[1].tolist() == [1000, 1000, 0, 0]


def test_a_node_added_rebuilds_and_a_relist_rebuilds() -> None:
    world = World()
    add_node("n3", 2)(world)
    world.state.snapshot()
    assert world.state.rebuilds == 2
    world.state.replace_pods([])
    world.state.snapshot()
    assert world.state.rebuilds == 3


def test_a_relist_drops_assumed_pods_that_no_longer_exist() -> None:
    world = World()
    create_pod("a", 1, 0)(world)
    assume_pod("a", "n0", (0,))(world)
    assert world.state.snapshot().gpu_milli_free[0, 0] == 0
    world.pods.pop("a")  # deleted while the watch was down
    world.state.replace_pods([])
    assert not world.state.assumed
    assert world.state.snapshot().gpu_milli_free[0, 0] == 1000
