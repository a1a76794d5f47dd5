"""ExtenderService without HTTP, built as `gpusched-extender --cluster-file` builds it, with a fake Binder.

The fake stands in for the API server's Binding: it records every call, can be told to fail (and then
answers like the API, with an exception) or to hold a bind until the test releases it, so that what
the service holds while a bind is in flight can be looked at.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np
import pytest

from scheduler.core.gang_sources import K8S_POD_GROUP, PLUGINS_POD_GROUP, k8s_pod_group_size, plugins_pod_group_size
from scheduler.core.podspec import ANN_GANG_PLAN, ANN_GPU_IDS, ANN_PLANNED_NODE, ANN_RANK, ANN_TOPOLOGY_PATH, parse_pod
from scheduler.core.scenario import load_nodes, load_pods
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.extender import wire
from scheduler.extender.cli import build_offline
from scheduler.extender.service import Binder, ExtenderService, NodeJson, summarize
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.kube import KubeError
from scheduler.state.store import ASSUME_TTL_S, ClusterState
from tests.builders import gpu_node, mig_gpu, mig_pod, node_object, pod, report_object, reported_node

WAIT_S = 10.0  # the longest any test waits for another thread; a pass never comes near it
GANG = "scheduling.x-k8s.io/pod-group"
RANK = "batch.kubernetes.io/job-completion-index"


class BindCall(NamedTuple):
    namespace: str
    name: str
    uid: str
    node: str
    annotations: dict[str, str]


@dataclass
class FakeBinder:
    """The Binder protocol in memory.

    `objects` answers get_pod. `fail` makes every bind raise it (after recording the call);
    `fail_on` limits that to the pods named.
    A bind of a pod named in `hold` blocks until `release()`: `entered` is set once it blocks.
    """

    objects: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    fail: Exception | None = None
    fail_on: set[str] | None = None
    hold: set[str] = field(default_factory=set)
    calls: list[BindCall] = field(default_factory=list)
    annotated: list[BindCall] = field(default_factory=list)  # annotate() calls (node empty)
    fail_annotate: set[str] | None = None  # pod names whose annotate() the API refuses
    lookups: list[str] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    _released: threading.Event = field(default_factory=threading.Event)

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.lookups.append(f"{namespace}/{name}")
        return self.objects.get(f"{namespace}/{name}")

    def annotate(self, namespace: str, name: str, uid: str, annotations: dict[str, str]) -> None:
        self.annotated.append(BindCall(namespace, name, uid, "", dict(annotations)))
        if self.fail_annotate is not None and name in self.fail_annotate:
            raise KubeError(404, f'pods "{name}" not found')

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        self.calls.append(BindCall(namespace, name, uid, node, dict(annotations)))
        if name in self.hold:
            self.entered.set()
            if not self._released.wait(WAIT_S):
                raise TimeoutError("the test never released the bind")
        if self.fail is not None and (self.fail_on is None or name in self.fail_on):
            raise self.fail

    def release(self) -> None:
        self._released.set()


def _binder_protocol(binder: FakeBinder) -> Binder:
    return binder  # mypy checks here that FakeBinder implements the Binder protocol


def offline_service(
    nodes: Sequence[NodeState], running: Iterable[PodRequest] = (), binder: FakeBinder | None = None
) -> tuple[ExtenderService, FakeBinder]:
    """As scheduler/extender/cli.py's build_offline, with the fake binder."""
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static(nodes, running)
    binder = binder or FakeBinder()
    return ExtenderService(state, registry.build(config), _binder_protocol(binder), ExtenderMetrics()), binder


def filter_(service: ExtenderService, obj: dict[str, Any], nodes: Sequence[str]) -> wire.ExtenderFilterResult:
    answer = service.filter(wire.ExtenderArgs(pod=obj, node_names=list(nodes)))
    assert isinstance(answer, wire.ExtenderFilterResult)  # JSON only for requests as sent over HTTP
    return answer


def prioritize(service: ExtenderService, obj: dict[str, Any], nodes: Sequence[str]) -> list[wire.HostPriority]:
    answer = service.prioritize(wire.ExtenderArgs(pod=obj, node_names=list(nodes)))
    return msgspec.json.decode(answer, type=list[wire.HostPriority])


def bind(service: ExtenderService, obj: dict[str, Any], node: str) -> wire.ExtenderBindingResult:
    meta = obj["metadata"]
    return service.bind(wire.ExtenderBindingArgs(meta["name"], meta["namespace"], meta["uid"], node))


def binds(service: ExtenderService, result: str) -> float:
    value = service.metrics.registry.get_sample_value("gpusched_binds_total", {"result": result})
    return value or 0.0


def held(service: ExtenderService) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Pod (or reservation) key -> (node, GPUs, milli per GPU) in the service's current snapshot."""
    snap = service.state.snapshot()
    return {key: (snap.names[p.node], p.gpus, p.milli) for key, p in snap.placements.items()}


def free_gpus(service: ExtenderService) -> dict[str, int]:
    snap = service.state.snapshot()
    return dict(zip(snap.names, snap.gpu_free_count().tolist(), strict=True))


def gpu_ids(call: BindCall) -> tuple[int, ...]:
    return tuple(int(g) for g in call.annotations[ANN_GPU_IDS].split(","))


# ----------------------------------------------------------------------------- plain pods
@dataclass(frozen=True)
class PlainCase:
    id: str
    obj: dict[str, Any]
    gpus: int  # GPUs the pod gets
    milli: int  # per GPU
    known: bool = True  # the informer saw the pod (else bind asks the binder for it)


PLAIN = [
    PlainCase("one-gpu", pod("p", 1), 1, 1000),
    PlainCase("four-gpus", pod("p", 4), 4, 1000),
    PlainCase("gpu-share", pod("p", 0, {"gpusched.io/gpu-milli": "250"}), 1, 250),
    PlainCase("pod-the-informer-has-not-seen", pod("p", 2), 2, 1000, known=False),
    PlainCase("cpu-only", pod("p", 0), 0, 0, known=False),  # not a GPU pod: the informer skips it
]


@pytest.mark.parametrize("case", PLAIN, ids=[c.id for c in PLAIN])
def test_filter_then_bind_gives_the_binder_the_node_and_gpus_and_holds_them(case: PlainCase) -> None:
    service, binder = offline_service([gpu_node("n0", 4), gpu_node("n1", 8)])
    if case.known:
        service.state.upsert_pod(case.obj)
    binder.objects["default/p"] = case.obj

    passed = filter_(service, case.obj, ["n0", "n1"])
    assert passed.error == "" and passed.node_names == ["n0", "n1"]
    before = service.state.snapshot().gpu_milli_free[0].copy()
    assert bind(service, case.obj, "n0").error == ""

    (call,) = binder.calls
    assert call[:4] == ("default", "p", "uid-p", "n0")
    assert binder.lookups == ([] if case.known else ["default/p"])
    if not case.gpus:  # held for its CPU and memory only
        assert call.annotations == {} and held(service)["default/p"][:2] == ("n0", ())
        assert service.state.snapshot().gpu_milli_free[0].tolist() == before.tolist()
        return
    assert set(call.annotations) == {ANN_GPU_IDS}
    ids = gpu_ids(call)
    assert len(set(ids)) == case.gpus and all(before[g] == 1000 for g in ids)
    # The snapshot now shows those GPUs taken, by this pod, and nothing else changed.
    assert held(service)["default/p"] == ("n0", ids, case.milli)
    after = service.state.snapshot().gpu_milli_free[0]
    assert after.tolist() == [m - case.milli if g in ids else m for g, m in enumerate(before.tolist())]
    assert "default/p" in service.state.assumed and binds(service, "bound") == 1
    # ... and a pod that needs every GPU of n0 no longer passes there.
    whole = filter_(service, pod("whole", 4), ["n0", "n1"])
    assert whole.node_names == ["n1"] and "n0" in whole.failed_nodes


def test_quick_binds_to_one_node_get_disjoint_gpus_until_it_is_full() -> None:
    service, binder = offline_service([gpu_node("n0", 4)])
    for i in range(5):
        service.state.upsert_pod(pod(f"q{i}", 1))
    answers = [bind(service, pod(f"q{i}", 1), "n0").error for i in range(5)]
    assert answers[:4] == ["", "", "", ""]
    assert answers[4].startswith("gpusched: default/q4 no longer fits n0: ")
    assert sorted(g for call in binder.calls for g in gpu_ids(call)) == [0, 1, 2, 3]
    assert len(binder.calls) == 4 and service.state.snapshot().over_committed() == []


def test_mig_pods_bind_to_distinct_instances_and_the_one_too_many_is_refused() -> None:
    """Two 1g.12gb instances on "sliced", none on "plain": the third MIG pod finds no node."""
    sliced = reported_node("sliced", [mig_gpu(0, [("1g.12gb", []), ("1g.12gb", [])])])
    service, binder = offline_service([sliced, gpu_node("plain", 2)])
    for name in ("m0", "m1"):
        service.state.upsert_pod(mig_pod(name))
        assert filter_(service, mig_pod(name), ["sliced", "plain"]).node_names == ["sliced"]
        assert bind(service, mig_pod(name), "sliced").error == ""
    snap = service.state.snapshot()
    assert {snap.placements[f"default/{n}"].mig for n in ("m0", "m1")} == {("MIG-0-0",), ("MIG-0-1",)}
    explained = [service.explain("default", n) for n in ("m0", "m1")]
    assert sorted(e["migInstances"] for e in explained if e) == [["MIG-0-0"], ["MIG-0-1"]]
    assert all(ANN_GPU_IDS not in call.annotations for call in binder.calls)  # no whole GPU chosen
    service.state.upsert_pod(mig_pod("m2"))
    refused = filter_(service, mig_pod("m2"), ["sliced", "plain"])
    assert refused.node_names == []
    # sliced: 2 instances - 2 bound; evicting one would free one. plain: no eviction helps.
    assert refused.failed_nodes == {"sliced": "gpusched: needs 1 x MIG 1g.12gb, 0 free"}
    assert refused.failed_and_unresolvable_nodes == {
        "plain": "gpusched: needs 1 x MIG 1g.12gb, node has none (no MIG-enabled GPU)"
    }
    answer = bind(service, mig_pod("m2"), "sliced").error
    assert answer == "gpusched: default/m2 no longer fits sliced: needs 1 x MIG 1g.12gb, 0 free"
    assert len(binder.calls) == 2 and service.state.snapshot().over_committed() == []


@dataclass(frozen=True)
class RefusedCase:
    id: str
    node: str
    error: str  # the whole answer
    metric: str
    setup: Callable[[ExtenderService], None] = lambda service: None
    obj: dict[str, Any] = field(default_factory=lambda: pod("p", 2))


REFUSED = [
    RefusedCase("unknown-node", "ghost", "gpusched: node ghost is unknown to gpusched", "unknown_node"),
    RefusedCase(
        "node-gone-since-filter",
        "n1",
        "gpusched: node n1 is unknown to gpusched",
        "unknown_node",
        setup=lambda service: service.state.delete_node(node_object("n1")),
    ),
    RefusedCase(
        "pod-nowhere",
        "n0",
        "gpusched: pod default/nobody not found",
        "pod_not_found",
        obj=pod("nobody", 1),
    ),
    RefusedCase(
        "node-filled-since-filter",
        "n0",
        "gpusched: default/p no longer fits n0: needs 2 GPUs, 1 of 4 allocatable left",
        "no_longer_fits",
        setup=lambda service: service.state.upsert_pod(pod("other", 3, node="n0", gpuIds=[0, 1, 2])),
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_a_refused_bind_says_why_calls_no_binder_and_holds_nothing(case: RefusedCase) -> None:
    service, binder = offline_service([gpu_node("n0", 4), gpu_node("n1", 8)])
    service.state.upsert_pod(pod("p", 2))
    assert filter_(service, case.obj, ["n0", "n1"]).node_names == ["n0", "n1"]
    case.setup(service)
    placed_before, free_before = held(service), free_gpus(service)

    assert bind(service, case.obj, case.node).error == case.error

    assert binder.calls == []
    assert service.state.assumed == {}
    assert held(service) == placed_before and free_gpus(service) == free_before
    assert binds(service, case.metric) == 1 and binds(service, "bound") == 0


@pytest.mark.parametrize(
    "failure",
    [
        KubeError(409, 'Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "n9"'),
        KubeError(0, "connection refused"),
        RuntimeError("a bug in the binder"),
    ],
    ids=["conflict", "api-unreachable", "any-exception"],
)
def test_binder_failure_rolls_back_and_the_gpus_serve_the_next_pod(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    service, binder = offline_service([gpu_node("n0", 4)])
    service.state.upsert_pod(pod("p", 4))
    service.state.upsert_pod(pod("q", 4))
    binder.fail = failure

    answer = bind(service, pod("p", 4), "n0")

    assert answer.error == f"gpusched: binding default/p to n0 failed: {failure}"
    assert len(binder.calls) == 1 and gpu_ids(binder.calls[0]) == (0, 1, 2, 3)
    assert service.state.assumed == {} and held(service) == {} and free_gpus(service) == {"n0": 4}
    assert binds(service, "api_error") == 1 and binds(service, "bound") == 0
    assert any(r.levelname == "WARNING" and str(failure) in r.getMessage() for r in caplog.records)
    # The GPUs went back: the next pod that needs all of them gets them.
    binder.fail = None
    assert filter_(service, pod("q", 4), ["n0"]).node_names == ["n0"]
    assert bind(service, pod("q", 4), "n0").error == ""
    assert gpu_ids(binder.calls[1]) == (0, 1, 2, 3) and held(service) == {"default/q": ("n0", (0, 1, 2, 3), 1000)}


@pytest.mark.parametrize(
    "failure",
    [TimeoutError("read timed out"), KubeError(0, "POST binding: connection reset", outcome_unknown=True)],
    ids=["timeout", "reset-after-sending"],
)
def test_a_bind_without_an_answer_holds_the_gpus_for_the_ttl_from_its_end(failure: Exception) -> None:
    clock = [1000.0]
    service, binder = offline_service([gpu_node("n0", 4)])
    service.state.clock = lambda: clock[0]
    service.state.upsert_pod(pod("p", 4))
    binder.fail = failure
    answer = bind(service, pod("p", 4), "n0")
    assert answer.error == f"gpusched: binding default/p to n0 failed: {failure} (held in case it took)"
    assert binds(service, "outcome_unknown") == 1
    # The Binding may have taken: the GPUs stay held ASSUME_TTL_S from the failed call's end.
    clock[0] += ASSUME_TTL_S - 1
    assert held(service) == {"default/p": ("n0", (0, 1, 2, 3), 1000)}
    clock[0] += 2
    assert held(service) == {} and free_gpus(service) == {"n0": 4}


def test_a_successful_bind_is_held_until_the_informer_shows_it_however_late() -> None:
    clock = [1000.0]
    service, _ = offline_service([gpu_node("n0", 4)])
    service.state.clock = lambda: clock[0]
    service.state.upsert_pod(pod("p", 4))
    assert bind(service, pod("p", 4), "n0").error == ""
    clock[0] += 10 * ASSUME_TTL_S  # the informer lags far behind
    assert held(service) == {"default/p": ("n0", (0, 1, 2, 3), 1000)}
    assert filter_(service, pod("q", 1), ["n0"]).node_names == []
    # The informer catches up: its copy takes over, nothing is counted twice.
    service.state.upsert_pod(pod("p", 4, node="n0", gpuIds=[0, 1, 2, 3]))
    assert service.state.assumed == {} and held(service) == {"default/p": ("n0", (0, 1, 2, 3), 1000)}


def run_in_thread(work: Callable[[], wire.ExtenderBindingResult]) -> tuple[threading.Thread, list[str]]:
    answers: list[str] = []
    thread = threading.Thread(target=lambda: answers.append(work().error), daemon=True)
    thread.start()
    return thread, answers


@pytest.mark.parametrize("succeeds", [True, False], ids=["binder-succeeds", "binder-fails"])
def test_gpus_of_an_in_flight_bind_are_held_until_the_binder_answers(succeeds: bool) -> None:
    service, binder = offline_service([gpu_node("n0", 4)])
    for name, gpus in (("p", 4), ("q", 1)):
        service.state.upsert_pod(pod(name, gpus))
    binder.hold = {"p"}
    if not succeeds:
        binder.fail = KubeError(500, "etcdserver: request timed out")

    thread, answers = run_in_thread(lambda: bind(service, pod("p", 4), "n0"))
    assert binder.entered.wait(WAIT_S), "the bind never reached the binder"
    # Meanwhile (the service lock is free) another pod is filtered and bound: p's GPUs are taken.
    meanwhile = filter_(service, pod("q", 1), ["n0"])
    assert meanwhile.node_names == [] and "n0" in meanwhile.failed_nodes
    assert bind(service, pod("q", 1), "n0").error.startswith("gpusched: default/q no longer fits n0")
    assert held(service) == {"default/p": ("n0", (0, 1, 2, 3), 1000)}
    binder.release()
    thread.join(WAIT_S)
    assert not thread.is_alive()

    if succeeds:
        assert answers == [""] and free_gpus(service) == {"n0": 0}
    else:
        assert answers == ["gpusched: binding default/p to n0 failed: HTTP 500: etcdserver: request timed out"]
        assert free_gpus(service) == {"n0": 4}
        assert filter_(service, pod("q", 1), ["n0"]).node_names == ["n0"]


def test_binds_to_different_nodes_do_not_wait_on_each_others_api_call() -> None:
    service, binder = offline_service([gpu_node("n0", 4), gpu_node("n1", 4)])
    for name in ("p", "q"):
        service.state.upsert_pod(pod(name, 2))
    binder.hold = {"p"}
    thread, answers = run_in_thread(lambda: bind(service, pod("p", 2), "n0"))
    assert binder.entered.wait(WAIT_S), "the bind never reached the binder"
    # p's API call is still under way: q's bind to n1 goes through from start to end meanwhile.
    assert bind(service, pod("q", 2), "n1").error == ""
    assert [c.name for c in binder.calls] == ["p", "q"] and thread.is_alive()
    binder.release()
    thread.join(WAIT_S)
    assert answers == [""]
    assert free_gpus(service) == {"n0": 2, "n1": 2}


def test_a_bind_retried_to_another_node_moves_the_pod_without_double_counting() -> None:
    service, binder = offline_service([gpu_node("n0", 4), gpu_node("n1", 4)])
    service.state.upsert_pod(pod("p", 2))
    assert bind(service, pod("p", 2), "n0").error == ""
    assert bind(service, pod("p", 2), "n1").error == ""
    assert [c.node for c in binder.calls] == ["n0", "n1"]
    assert held(service) == {"default/p": ("n1", gpu_ids(binder.calls[1]), 1000)}
    assert free_gpus(service) == {"n0": 4, "n1": 2}


def test_a_retried_bind_that_the_api_refuses_keeps_the_first_placement() -> None:
    service, binder = offline_service([gpu_node("n0", 4), gpu_node("n1", 4)])
    service.state.upsert_pod(pod("p", 4))
    assert bind(service, pod("p", 4), "n0").error == ""  # bound in the API; the informer has not said so yet
    binder.fail = KubeError(409, 'pod p is already assigned to node "n0"')
    assert bind(service, pod("p", 4), "n1").error.startswith("gpusched: binding default/p to n1 failed")
    # p runs on n0: its GPUs there must stay taken, or the next pod is put on them.
    assert free_gpus(service) == {"n0": 0, "n1": 4}


# ---------------------------------------------------------------------------------- gangs
def member(name: str, size: int, gpus: int, rank: int, group: str = "g", **extra: Any) -> dict[str, Any]:
    labels = {GANG: group, RANK: str(rank)}
    return pod(name, gpus, {"gpusched.io/min-member": str(size)}, labels=labels, **extra)


def reservations(service: ExtenderService) -> dict[str, tuple[str, tuple[int, ...], int]]:
    return {k: v for k, v in held(service).items() if k.startswith("default/gang:")}


def planned_nodes(service: ExtenderService) -> dict[int, str]:
    """Rank -> node of the gang's reservations."""
    return {int(k.rsplit(":", 1)[1]): v[0] for k, v in reservations(service).items()}


def as_bound(obj: dict[str, Any], call: BindCall) -> dict[str, Any]:
    """The pod as the API shows it after the Binding `call` (annotations copied, node set)."""
    bound = {**obj, "metadata": {**obj["metadata"]}, "spec": {**obj["spec"], "nodeName": call.node}}
    bound["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}), **call.annotations}
    return bound


def as_annotated(obj: dict[str, Any], call: BindCall) -> dict[str, Any]:
    """The pod as the API shows it after the plan was written on it."""
    out = {**obj, "metadata": {**obj["metadata"]}}
    out["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}), **call.annotations}
    return out


def test_gang_members_are_unschedulable_until_all_exist_and_nothing_is_held() -> None:
    service, binder = offline_service([gpu_node("a", 8), gpu_node("b", 8), gpu_node("c", 8)])
    first = member("g-0", 2, 8, 0)
    service.state.upsert_pod(first)

    early = filter_(service, first, ["a", "b", "c"])
    # Per-node failures (kube-scheduler: Unschedulable), unresolvable: preemption cannot make
    # the missing member exist.
    why = "gpusched: gang g: waiting for members (1 of 2 exist); nothing is held until all exist"
    assert early.error == "" and early.node_names == [] and early.failed_nodes == {}
    assert early.failed_and_unresolvable_nodes == dict.fromkeys("abc", why)
    assert reservations(service) == {} and service.gangs.pending() == 0
    assert filter_(service, pod("plain", 8), ["a", "b", "c"]).node_names == ["a", "b", "c"]
    assert bind(service, first, "a").error == "gpusched: " + why.removeprefix("gpusched: ")
    assert binder.calls == [] and binder.annotated == []


def test_a_gang_is_bound_whole_by_the_bind_of_its_last_member() -> None:
    service, binder = offline_service([gpu_node("a", 8), gpu_node("b", 8), gpu_node("c", 8)])
    first, second = member("g-0", 2, 8, 0), member("g-1", 2, 8, 1)
    for obj in (first, second):
        service.state.upsert_pod(obj)

    answers = [filter_(service, obj, ["a", "b", "c"]) for obj in (first, second)]
    planned = planned_nodes(service)
    assert sorted(planned) == [0, 1] and planned[0] != planned[1]
    for rank, answer in enumerate(answers):
        assert answer.error == "" and answer.node_names == [planned[rank]]
        assert answer.failed_nodes == {
            n: f"gpusched: gang g: rank {rank} is planned on {planned[rank]}" for n in "abc" if n != planned[rank]
        }
    (spare,) = {"a", "b", "c"} - set(planned.values())
    # The reserved GPUs are not free for others: a plain 8-GPU pod fits only on the third node.
    assert filter_(service, pod("plain", 8), ["a", "b", "c"]).node_names == [spare]
    assert bind(service, first, spare).error == f"gpusched: gang g: rank 0 is planned on {planned[0]}"

    # The first member to reach bind is refused (kube-scheduler retries it); nothing reaches the API.
    early = bind(service, first, planned[0])
    assert early.error == (
        "gpusched: gang g: 1 of 2 members ready to bind; all are bound when the last one is (ranks missing: 1)"
    )
    assert binder.calls == [] and binder.annotated == [] and binds(service, "gang_waiting") == 1

    # The last one binds both: the plan is written on every member first, then the Bindings.
    assert bind(service, second, planned[1]).error == ""
    assert [c.name for c in binder.annotated] == ["g-0", "g-1"]
    assert [(c.name, c.node) for c in binder.calls] == [("g-0", planned[0]), ("g-1", planned[1])]
    plan_id = binder.annotated[0].annotations[ANN_GANG_PLAN]
    for written, call, rank in zip(binder.annotated, binder.calls, (0, 1), strict=True):
        assert (
            written.annotations
            == call.annotations
            == {
                ANN_GANG_PLAN: plan_id,
                ANN_RANK: str(rank),
                ANN_PLANNED_NODE: planned[rank],
                ANN_TOPOLOGY_PATH: "-/" * 9 + planned[rank],  # ten default tiers, only the hostname labelled
                ANN_GPU_IDS: "0,1,2,3,4,5,6,7",
            }
        )
    assert reservations(service) == {} and service.gangs.pending() == 0 and service.gangs.placed_total == 1
    assert held(service) == {
        "default/g-0": (planned[0], tuple(range(8)), 1000),
        "default/g-1": (planned[1], tuple(range(8)), 1000),
    }
    # kube-scheduler retries the first member before its informer shows it bound: the answer is
    # yes, with no second Binding.
    assert bind(service, first, planned[0]).error == "" and len(binder.calls) == 2
    assert service.state.snapshot().over_committed() == []


def test_a_gang_that_does_not_fit_is_unschedulable_on_every_node_and_holds_nothing() -> None:
    service, _ = offline_service([gpu_node("a", 8), gpu_node("b", 8)])
    members = [member(f"big-{r}", 3, 8, r, group="big") for r in range(3)]
    for obj in members:
        service.state.upsert_pod(obj)
    answer = filter_(service, members[0], ["a", "b"])
    # Resolvable: preemption or a new node (cluster-autoscaler) could make it fit.
    why = "gpusched: gang of 3 x 8 GPUs does not fit in the cluster (best: 2)"
    assert answer.error == "" and answer.node_names == []
    assert answer.failed_nodes == {"a": why, "b": why} and answer.failed_and_unresolvable_nodes == {}
    assert reservations(service) == {} and service.gangs.pending() == 0


def test_a_planned_node_kube_scheduler_no_longer_offers_is_planned_anew_at_once() -> None:
    service, binder = offline_service([gpu_node("a", 8), gpu_node("b", 8), gpu_node("c", 8)])
    members = [member(f"g-{r}", 2, 8, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    assert filter_(service, members[0], ["a", "b", "c"]).node_names == ["a"]
    assert planned_nodes(service) == {0: "a", 1: "b"}
    # b was tainted: kube-scheduler's own filters offer a and c only.
    answer = filter_(service, members[1], ["a", "c"])
    assert answer.error == "" and planned_nodes(service) == {0: "a", 1: "c"} and answer.node_names == ["c"]
    assert service.gangs.replans_total == 1
    assert bind(service, members[0], "a").error.startswith("gpusched: gang g: 1 of 2 members ready")
    assert bind(service, members[1], "c").error == ""
    assert [(c.name, c.node) for c in binder.calls] == [("g-0", "a"), ("g-1", "c")]


def test_the_plan_stays_inside_the_offered_nodes_and_their_cpu() -> None:
    nodes = [gpu_node("a", 8), gpu_node("b", 8), gpu_node("c", 8)]
    service, _ = offline_service(nodes)
    members = [member(f"g-{r}", 2, 4, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    # Two members of 4 GPUs pack one node; the first in order would be a, which is not offered.
    assert filter_(service, members[0], ["b", "c"]).node_names == ["b"]
    assert planned_nodes(service) == {0: "b", 1: "b"}

    nodes = [gpu_node("a", 8, cpu_milli=8000), gpu_node("b", 8)]
    service, _ = offline_service(nodes)
    members = [member(f"h-{r}", 2, 4, r, group="h", cpu="6") for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    # a has the GPUs for both members but the CPU for one (8 // 6 = 1): both go to b.
    filter_(service, members[0], ["a", "b"])
    assert planned_nodes(service) == {0: "b", 1: "b"}


def test_a_plan_that_cannot_be_written_binds_nothing_and_the_gang_stays_planned() -> None:
    service, binder = offline_service([gpu_node("a", 8)])
    members = [member(f"g-{r}", 2, 4, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    assert filter_(service, members[0], ["a"]).node_names == ["a"]
    planned = reservations(service)
    binder.fail_annotate = {"g-1"}
    assert bind(service, members[0], "a").error.startswith("gpusched: gang g: 1 of 2 members ready")
    answer = bind(service, members[1], "a")
    assert answer.error == (
        'gpusched: gang g: writing the plan on default/g-1 failed, nothing bound: HTTP 404: pods "g-1" not found'
    )
    assert binder.calls == [] and reservations(service) == planned
    assert filter_(service, pod("plain", 1), ["a"]).node_names == []  # still the gang's
    binder.fail_annotate = None
    assert bind(service, members[1], "a").error == ""
    assert [c.name for c in binder.calls] == ["g-0", "g-1"]


def test_a_binding_that_fails_midway_is_completed_by_the_members_next_bind() -> None:
    service, binder = offline_service([gpu_node("a", 8)])
    members = [member(f"g-{r}", 2, 4, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    assert filter_(service, members[0], ["a"]).node_names == ["a"]
    planned = reservations(service)
    binder.fail, binder.fail_on = KubeError(0, "connection reset by peer"), {"g-1"}
    bind(service, members[0], "a")
    answer = bind(service, members[1], "a")
    assert answer.error == "gpusched: binding default/g-1 to a failed: connection reset by peer"
    # g-0 is bound; g-1's GPUs stay the gang's, and its next bind goes through at once.
    assert reservations(service) == {"default/gang:g:1": planned["default/gang:g:1"]}
    assert filter_(service, pod("plain", 1), ["a"]).node_names == []
    binder.fail = None
    assert filter_(service, members[1], ["a"]).node_names == ["a"]
    assert bind(service, members[1], "a").error == ""
    assert [c.name for c in binder.calls] == ["g-0", "g-1", "g-1"]
    assert gpu_ids(binder.calls[-1]) == planned["default/gang:g:1"][1]
    assert service.gangs.placed_total == 1 and reservations(service) == {}
    assert service.state.snapshot().over_committed() == []


def test_a_member_whose_binding_got_no_answer_is_not_told_it_is_bound() -> None:
    clock = [1000.0]
    service, binder = offline_service([gpu_node("a", 8)])
    service.state.clock = lambda: clock[0]
    members = [member(f"g-{r}", 2, 4, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    filter_(service, members[0], ["a"])
    binder.fail, binder.fail_on = TimeoutError("read timed out"), {"g-1"}
    bind(service, members[0], "a")
    assert bind(service, members[1], "a").error.endswith("(held in case it took)")
    binder.fail = None
    # kube-scheduler retries g-1: the Binding may or may not have taken, so no yes.
    answer = bind(service, members[1], "a")
    assert answer.error == "gpusched: gang g: default/g-1's Binding got no answer; waiting for the API to show it"
    # The hold lapses with no sign of it in the API: the durable gang binds it on the next attempt.
    clock[0] += ASSUME_TTL_S + 1
    assert bind(service, members[1], "a").error == ""
    assert [c.name for c in binder.calls] == ["g-0", "g-1", "g-1"]
    assert service.gangs.placed_total == 1


def restarted(nodes: Sequence[NodeState], objects: Iterable[dict[str, Any]]) -> tuple[ExtenderService, FakeBinder]:
    """A new extender whose informer lists `objects` (the API's pods)."""
    service, binder = offline_service(nodes)
    service.state.replace_pods(list(objects))
    return service, binder


def test_a_restart_after_the_first_binding_completes_the_gang_by_its_written_plan() -> None:
    nodes = [gpu_node("a", 8), gpu_node("b", 8), gpu_node("c", 8)]
    service, binder = offline_service(nodes)
    members = [member(f"g-{r}", 2, 8, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    filter_(service, members[0], ["a", "b", "c"])
    planned = planned_nodes(service)
    binder.fail, binder.fail_on = KubeError(0, "extender killed"), {"g-1"}  # dies before g-1's Binding
    bind(service, members[0], planned[0])
    bind(service, members[1], planned[1])
    api = [as_bound(members[0], binder.calls[0]), as_annotated(members[1], binder.annotated[1])]

    # The new extender must not plan g-1 anew (a c node is as good): it completes the written plan.
    service, binder = restarted(nodes, api)
    assert filter_(service, members[1], ["a", "b", "c"]).node_names == [planned[1]]
    assert bind(service, members[1], planned[1]).error == ""
    assert [(c.name, c.node) for c in binder.calls] == [("g-1", planned[1])]
    assert binder.annotated == []  # the plan is on the pod already
    assert service.gangs.placed_total == 1 and reservations(service) == {}


def test_a_restart_before_any_binding_plans_the_gang_afresh() -> None:
    nodes = [gpu_node("a", 8), gpu_node("b", 8)]
    service, binder = offline_service(nodes)
    members = [member(f"g-{r}", 2, 8, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    filter_(service, members[0], ["a", "b"])
    binder.fail, binder.fail_on = KubeError(0, "extender killed"), {"g-0"}
    bind(service, members[0], "a")
    bind(service, members[1], "b")
    api = [as_annotated(m, w) for m, w in zip(members, binder.annotated, strict=True)]

    service, binder = restarted(nodes, api)
    filter_(service, members[0], ["a", "b"])
    assert bind(service, members[0], "a").error.startswith("gpusched: gang g: 1 of 2 members ready")
    assert bind(service, members[1], "b").error == ""
    assert [c.name for c in binder.calls] == ["g-0", "g-1"]
    assert binder.calls[0].annotations[ANN_GANG_PLAN] != api[0]["metadata"]["annotations"][ANN_GANG_PLAN]


def gang_with_rank_1_planned_on_a_node_that_goes(informer_caught_up: bool) -> tuple[ExtenderService, FakeBinder]:
    """A gang of 2 x 8 GPUs over nodes a, b, c: rank 0 is bound to a, rank 1's Binding to b failed,
    then node b goes."""
    service, binder = offline_service([gpu_node("a", 8), gpu_node("b", 8), gpu_node("c", 8)])
    first, second = member("g-0", 2, 8, 0), member("g-1", 2, 8, 1)
    for obj in (first, second):
        service.state.upsert_pod(obj)
    assert filter_(service, first, ["a", "b", "c"]).node_names == ["a"]
    assert filter_(service, second, ["a", "b", "c"]).node_names == ["b"]
    binder.fail, binder.fail_on = KubeError(500, "etcd timeout"), {"g-1"}
    bind(service, first, "a")
    assert bind(service, second, "b").error.startswith("gpusched: binding default/g-1 to b failed")
    binder.fail = None
    if informer_caught_up:
        service.state.upsert_pod(as_bound(first, binder.calls[0]))
    service.state.delete_node(node_object("b"))
    return service, binder


@pytest.mark.parametrize("informer_caught_up", [True, False], ids=["bound", "only-assumed"])
def test_planned_node_gone_replans_the_rest_of_the_gang_around_its_bound_member(informer_caught_up: bool) -> None:
    service, binder = gang_with_rank_1_planned_on_a_node_that_goes(informer_caught_up)
    second = member("g-1", 2, 8, 1)
    # kube-scheduler's bind to the node it had picked before is refused, nothing reaches the API.
    assert bind(service, second, "b").error == "gpusched: node b is unknown to gpusched"
    again = filter_(service, second, ["a", "c"])
    assert again.error == "" and again.node_names == ["c"]
    assert again.failed_nodes == {"a": "gpusched: gang g: rank 1 is planned on c"}
    assert bind(service, second, "c").error == ""
    assert binder.annotated[-1].name == "g-1" and binder.annotated[-1].annotations[ANN_PLANNED_NODE] == "c"
    assert binder.calls[-1].annotations[ANN_PLANNED_NODE] == "c" and binder.calls[-1].annotations[ANN_RANK] == "1"
    assert service.gangs.placed_total == 1 and reservations(service) == {}
    assert {k: v[0] for k, v in held(service).items()} == {"default/g-0": "a", "default/g-1": "c"}


def test_a_state_change_during_a_gang_bind_does_not_count_the_members_gpus_twice() -> None:
    service, binder = offline_service([gpu_node("a", 8)])
    members = [member(f"g-{r}", 2, 4, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    assert filter_(service, members[0], ["a"]).node_names == ["a"]
    bind(service, members[0], "a")
    binder.hold = {"g-1"}
    thread, answers = run_in_thread(lambda: bind(service, members[1], "a"))
    try:
        assert binder.entered.wait(WAIT_S), "the bind never reached the binder"
        # The API server's watch event for g-0's Binding comes in while g-1's is in flight.
        service.state.upsert_pod(as_bound(members[0], binder.calls[0]))
        snap = service.state.snapshot()
        used = {"over_committed": snap.over_committed(), "gpu_used_api": int(snap.gpu_used_api[0])}
        meanwhile = filter_(service, pod("plain", 1), ["a"])
    finally:
        binder.release()
        thread.join(WAIT_S)
    assert answers == [""]
    assert used == {"over_committed": [], "gpu_used_api": 8}
    assert meanwhile.node_names == []  # all 8 GPUs are the gang's, counted once


@pytest.mark.parametrize("binding_fails", [False, True], ids=["binding-succeeds", "binding-fails"])
def test_a_member_retried_while_its_binding_is_in_flight_is_told_to_wait(binding_fails: bool) -> None:
    """kube-scheduler never retries a pod it was told is bound: a member whose Binding the gang's
    bind has not created yet (the API may refuse it, the extender may die first) hears "wait"."""
    service, binder = offline_service([gpu_node("a", 8), gpu_node("b", 8)])
    members = [member(f"g-{r}", 2, 8, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    for obj in members:
        filter_(service, obj, ["a", "b"])
    planned = planned_nodes(service)
    assert bind(service, members[0], planned[0]).error.startswith("gpusched: gang g: 1 of 2 members ready")
    binder.hold = {"g-0"}  # g-1's bind binds rank 0 first: g-0 is assumed, its Binding in flight
    if binding_fails:
        binder.fail, binder.fail_on = KubeError(500, "etcdserver: request timed out"), {"g-0"}
    thread, answers = run_in_thread(lambda: bind(service, members[1], planned[1]))
    try:
        assert binder.entered.wait(WAIT_S), "the bind never reached the binder"
        retried = bind(service, members[0], planned[0]).error  # kube-scheduler retries g-0 meanwhile
    finally:
        binder.release()
        thread.join(WAIT_S)
    assert retried == "gpusched: gang g: its members are being bound now"
    assert answers == [""]  # g-1, the caller, is bound either way
    binder.fail = None
    # The next retry: bound already (no second Binding), or bound now by the gang's written plan.
    assert bind(service, members[0], planned[0]).error == ""
    assert [c.name for c in binder.calls] == (["g-0", "g-1", "g-0"] if binding_fails else ["g-0", "g-1"])


def test_a_gang_without_progress_for_the_ttl_lets_go_and_progress_renews_it() -> None:
    clock = [0.0]
    service, _ = offline_service([gpu_node("a", 8), gpu_node("b", 8)])
    service.state.clock = lambda: clock[0]
    members = [member(f"g-{r}", 2, 8, r) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    ttl = service.gangs.ttl_s  # 120 s by default
    filter_(service, members[0], ["a", "b"])  # planned at 0
    clock[0] = ttl - 1
    filter_(service, members[1], ["a", "b"])  # rank 1's first filter: progress at ttl - 1
    clock[0] = ttl + 10
    assert len(reservations(service)) == 2  # 11 s since the last progress
    filter_(service, members[0], ["a", "b"])  # rank 0 again: no progress
    clock[0] = 2 * ttl  # ttl + 1 s since the last progress: any verb lets the gang go
    assert filter_(service, pod("plain", 8), ["a", "b"]).node_names == ["a", "b"]
    assert reservations(service) == {} and service.gangs.expired_total == 1


def test_gang_preemption_evicts_only_on_the_members_node_in_the_plan() -> None:
    running = [
        PodRequest("default", "low-a", uid="ua", gpu_count=8, node_name="a", gpu_ids=tuple(range(8))),
        PodRequest("default", "low-b", uid="ub", gpu_count=8, node_name="b", gpu_ids=tuple(range(8))),
        PodRequest("default", "low-c", uid="uc", gpu_count=4, node_name="c", gpu_ids=(0, 1, 2, 3)),
    ]
    leaf = "network.topology.nvidia.com/leaf"
    nodes = [gpu_node(n, 8, labels={leaf: r}) for n, r in (("a", "l0"), ("b", "l0"), ("c", "l1"))]
    service, _ = offline_service(nodes, running)
    for p in running:
        service.state.upsert_pod(
            pod(p.name, p.gpu_count, node=p.node_name, gpuIds=list(p.gpu_ids), uid=p.uid, priority=0)
        )
    members = [member(f"hi-{r}", 2, 8, r, group="hi", priority=100) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    assert filter_(service, members[0], ["a", "b", "c"]).node_names == []
    victims = {n: wire.MetaVictims([wire.MetaPod(u)], 0) for n, u in (("a", "ua"), ("b", "ub"), ("c", "uc"))}
    kept = {}
    for obj in members:
        answer = service.preempt(wire.ExtenderPreemptionArgs(pod=obj, node_name_to_meta_victims=victims))
        kept[obj["metadata"]["name"]] = sorted(answer.node_name_to_meta_victims or {})
    # Without the low pods the gang packs leaf l0 (a, b): c, where eviction would also make one
    # member fit, is never offered.
    assert kept == {"hi-0": ["a"], "hi-1": ["b"]}


def test_gang_preemption_never_evicts_when_the_gang_would_still_not_fit() -> None:
    running = [PodRequest("default", "low-a", uid="ua", gpu_count=8, node_name="a", gpu_ids=tuple(range(8)))]
    service, _ = offline_service([gpu_node("a", 8)], running)
    members = [member(f"hi-{r}", 2, 8, r, group="hi", priority=100) for r in range(2)]
    for obj in members:
        service.state.upsert_pod(obj)
    victims = {"a": wire.MetaVictims([wire.MetaPod("ua")], 0)}
    answer = service.preempt(wire.ExtenderPreemptionArgs(pod=members[0], node_name_to_meta_victims=victims))
    assert answer.node_name_to_meta_victims == {}


def test_offline_binds_hold_for_good_and_the_next_pod_sees_the_gpus_taken() -> None:
    """`gpusched-extender --cluster-file`: kube-scheduler pointed at it can bind; pods are those
    its filter saw, and an offline bind is never forgotten (no informer will confirm it)."""
    scenario = {
        "nodeTypes": {"dgx": {"gpus": 8, "gpuModel": "H100-80GB", "gpuMemory": "80Gi", "interconnect": "nvswitch"}},
        "nodes": [{"name": "h100-r1-{i}", "count": 1, "type": "dgx"}],
    }
    service = build_offline(registry.config_from(None), scenario)
    service.state.clock = lambda: 10**9  # far beyond any assume TTL
    first, second = pod("b1", 8), pod("b2", 8)
    assert filter_(service, first, ["h100-r1-0"]).node_names == ["h100-r1-0"]
    assert bind(service, first, "h100-r1-0").error == ""
    answer = filter_(service, second, ["h100-r1-0"])
    assert answer.node_names == [] and "h100-r1-0" in answer.failed_nodes
    assert bind(service, second, "h100-r1-0").error.startswith("gpusched: default/b2 no longer fits h100-r1-0")
    assert held(service) == {"default/b1": ("h100-r1-0", tuple(range(8)), 1000)}


def test_the_offline_path_from_a_scenario_binds_around_running_pods() -> None:
    """The same service from a scenario file's contents, as `--cluster-file` loads it."""
    scenario = {
        "nodeTypes": {"l4": {"gpus": 4, "gpuModel": "L4", "gpuMemory": "24Gi", "interconnect": "pcie", "cuda": "12.2"}},
        "nodes": [{"name": "l4-{i}", "count": 2, "type": "l4"}],
        "pods": [
            {"name": "running", "node": "l4-0", "gpus": 3, "gpuIds": [0, 1, 3]},
            {"name": "pending", "gpus": 2},
        ],
    }
    service, binder = offline_service(load_nodes(scenario), load_pods(scenario))
    pending = pod("pending", 2)
    answer = filter_(service, pending, ["l4-0", "l4-1"])
    assert answer.node_names == ["l4-1"] and "l4-0" in answer.failed_nodes
    assert bind(service, pending, "l4-1").error == ""
    assert binder.calls[0].node == "l4-1" and len(set(gpu_ids(binder.calls[0]))) == 2
    snap = service.state.snapshot()
    assert snap.placements["default/running"].gpus == (0, 1, 3)
    assert np.array_equal(snap.gpu_free_count(), [1, 2]) and snap.over_committed() == []


def sent(obj: dict[str, Any], nodes: Sequence[str]) -> wire.SentArgs:
    """The request as the app decodes it from HTTP: NodeNames kept as the JSON sent."""
    return msgspec.json.decode(msgspec.json.encode({"Pod": obj, "NodeNames": list(nodes)}), type=wire.SentArgs)


def as_json(answer: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(answer))


@pytest.mark.parametrize(
    ("obj", "names"),
    [
        # n0..n2: 4 L4s (24 GiB); n3: 2 H100s; n4: stale report; n5: busy (3 of 4 GPUs held)
        pytest.param(pod("fits", 1), ["n0", "n3", "n5"], id="every node passes"),
        pytest.param(pod("two", 2), ["n0", "n1", "n2", "n3", "n4", "n5"], id="busy and stale nodes fail"),
        pytest.param(pod("big", 1, {"gpusched.io/gpu-memory": "40Gi"}), ["n5", "n0", "n3"], id="unresolvable too"),
        pytest.param(pod("eight", 8), ["n0", "n1", "n3"], id="no node passes"),
        pytest.param(pod("ghost", 1), ["n0", "ghost"], id="an unknown name"),
    ],
)
def test_an_http_request_gets_the_answer_a_decoded_one_gets(obj: dict[str, Any], names: list[str]) -> None:
    nodes = [
        *(gpu_node(f"n{i}", 4, model="L4", memory_gib=24) for i in range(3)),
        gpu_node("n3", 2),
        gpu_node("n4", 4, report_age_s=500.0),
        gpu_node("n5", 4),
    ]
    busy = [parse_pod(pod("busy", 3, node="n5"))]
    decoded, _ = offline_service(nodes, busy)
    over_http, _ = offline_service(nodes, busy)
    for _ in range(2):  # the second time from the answers kept for the pod's shape
        expected = as_json(decoded.filter(wire.ExtenderArgs(pod=obj, node_names=names)))
        assert as_json(over_http.filter(sent(obj, names))) == expected
        passed = expected["NodeNames"] or []
        expected_scores = as_json(decoded.prioritize(wire.ExtenderArgs(pod=obj, node_names=passed)))
        assert as_json(over_http.prioritize(sent(obj, passed))) == expected_scores


@pytest.mark.parametrize(
    ("names", "fixed"),
    [
        # "a" padded to the width of "long-node-name-42"; "ü" is 2 bytes in UTF-8; a quote escaped
        pytest.param(["a", "long-node-name-42", "ü", 'quote"d'], True, id="padded to one width"),
        # 4 quoted names of 3 to 9 bytes and one of 202: padding would more than double an answer
        pytest.param(["a", "bb", "ü", 'quote"d', "x" * 200], False, id="joined as they are"),
    ],
)
def test_json_pieces_for_names_of_any_length(names: list[str], fixed: bool) -> None:
    pieces = NodeJson(ClusterSnapshot([gpu_node(n, 1) for n in names]))
    assert pieces.fixed is fixed
    index = {n: i for i, n in enumerate(pieces.snapshot.names)}
    picked = np.array([index[n] for n in ("ü", "a", 'quote"d')], dtype=np.intp)
    listed = pieces.listed(picked)
    assert msgspec.json.decode(listed) == ["ü", "a", 'quote"d']
    # kube-scheduler sends the list back compact, as Go's encoder writes it
    assert pieces.compact(picked, listed) == msgspec.json.encode(["ü", "a", 'quote"d'])
    assert pieces.listed(picked[:0]) == b"[]"
    entries = b"{" + pieces.entries(picked, b'"why"')[:-1] + b"}"
    assert msgspec.json.decode(entries) == {"ü": "why", "a": "why", 'quote"d': "why"}
    scored = msgspec.json.decode(pieces.priorities(picked, np.array([10, 0, 7])), type=list[wire.HostPriority])
    assert [(h.host, h.score) for h in scored] == [("ü", 10), ("a", 0), ('quote"d', 7)]


def test_prioritize_over_http_after_filter_filters_nothing_again_whatever_the_names() -> None:
    names = ["a", "node-with-a-longer-name", "tiny", "node-7"]
    service, _ = offline_service([gpu_node(n, 1 if n == "tiny" else 4) for n in names])
    service.filter(sent(pod("p", 2), names))
    passed = msgspec.json.decode(msgspec.json.encode(service.filter(sent(pod("p", 2), names))))["NodeNames"]
    assert passed == ["a", "node-with-a-longer-name", "node-7"]  # 2 GPUs do not fit tiny's 1
    decided: list[PodRequest] = []
    decoded: list[object] = []
    decide, read_names = service.framework.decide, service._names
    service.framework.decide = lambda snap, p, *a, **k: decided.append(p) or decide(snap, p, *a, **k)  # type: ignore[method-assign]
    service._names = lambda args: decoded.append(args) or read_names(args)  # type: ignore[method-assign]
    scores = msgspec.json.decode(service.prioritize(sent(pod("p", 2), passed)), type=list[wire.HostPriority])
    assert sorted(h.host for h in scores) == sorted(passed)
    # The names were the list filter remembered (not decoded again), scored from the filter's pass.
    assert decoded == [] and decided == []


def test_prioritize_right_after_filter_scores_what_filter_passed_in_any_order_and_sees_changes() -> None:
    nodes = [gpu_node(f"n{i}", 4) for i in range(6)]
    service, _ = offline_service(nodes)
    fresh, _ = offline_service(nodes)
    service.state.upsert_pod(pod("p", 2))
    fresh.state.upsert_pod(pod("p", 2))
    names = [f"n{i}" for i in range(6)]
    passed = filter_(service, pod("p", 2), names).node_names
    assert passed == names
    subset = list(reversed(passed))[:4]  # kube-scheduler may send fewer names, in its own order
    reused = prioritize(service, pod("p", 2), subset)
    computed = prioritize(fresh, pod("p", 2), subset)
    assert [h.host for h in reused] == subset and reused == computed
    # The state moves between filter and prioritize (a pod fills n5): n5 is filtered again.
    filter_(service, pod("p", 2), names)
    service.state.upsert_pod(pod("full", 4, node="n5"))
    scores = {h.host: h.score for h in prioritize(service, pod("p", 2), names)}
    assert scores["n5"] == 0 and max(scores.values()) == 10


def test_a_rebuild_lets_the_snapshot_it_replaced_go() -> None:
    import gc
    import weakref

    service, _ = offline_service([gpu_node("n0", 4), gpu_node("n1", 4)])
    service.state.upsert_pod(pod("p", 2))
    filter_(service, pod("p", 2), ["n0", "n1"])
    prioritize(service, pod("p", 2), ["n0", "n1"])
    old = weakref.ref(service.state.snapshot())
    service.state.upsert_node(node_object("n2", gpus=4))  # a node added: a new snapshot
    filter_(service, pod("p", 2), ["n0", "n1", "n2"])
    gc.collect()
    assert old() is None  # frozen or leaked snapshots would stay alive here


# ----------------------------------------------------------------------------- malformed quantities
def test_a_bad_quantity_is_named_in_the_filter_error_and_a_bound_pod_with_one_keeps_its_gpu() -> None:
    config = registry.config_from(None)
    state = ClusterState(config)
    state.replace_nodes([node_object("n0", gpus=1)])
    state.replace_reports([report_object("n0", gpus=1)])
    service = ExtenderService(state, registry.build(config), _binder_protocol(FakeBinder()), ExtenderMetrics())
    # Through the informer's handler, as the API would show a bound pod: "1 core" is no quantity.
    state.upsert_pod(pod("holder", gpus=1, node="n0", gpuIds=[0], cpu="1 core"))
    assert free_gpus(service) == {"n0": 0}  # its GPU counts although its CPU figure does not

    bad = filter_(service, pod("bad", gpus=1, annotations={"gpusched.io/gpu-memory": "40 GB"}), ["n0"])
    assert bad.node_names is None
    assert "annotation gpusched.io/gpu-memory" in bad.error and "'40 GB'" in bad.error, bad.error

    good = filter_(service, pod("good", gpus=1), ["n0"])
    assert not good.node_names  # n0's only GPU is the holder's: never given twice
    assert free_gpus(service) == {"n0": 0}


# ----------------------------------------------------------------------------- the kubelet's GPU ids
def test_explain_and_metrics_show_where_the_kubelet_contradicts_the_annotation() -> None:
    config = registry.config_from(None)
    state = ClusterState(config)
    state.replace_nodes([node_object("n0", gpus=2)])
    service = ExtenderService(state, registry.build(config), _binder_protocol(FakeBinder()), ExtenderMetrics())
    state.upsert_pod(pod("p", gpus=1, node="n0", gpuIds=[0]))
    state.replace_reports([report_object("n0", gpus=2)])
    explained = service.explain("default", "p")
    assert explained is not None and explained["gpuIds"] == {"annotation": [0], "kubelet": [], "counted": [0]}
    assert service.metrics.registry.get_sample_value("gpusched_gpu_assignment_disagreements_total") == 0.0

    state.upsert_report(report_object("n0", gpus=2, holders={1: ["default/p"]}))  # the device plugin chose 1
    explained = service.explain("default", "p")
    assert explained is not None and explained["gpuIds"] == {"annotation": [0], "kubelet": [1], "counted": [1]}
    assert service.metrics.registry.get_sample_value("gpusched_gpu_assignment_disagreements_total") == 1.0
    assert held(service)["default/p"] == ("n0", (1,), 1000)  # GPU 0 is the free one now


def test_reasons_are_summarised_most_frequent_first_ties_by_reason() -> None:
    # 2 b, then a tie of 1 a and 1 c: alphabetical, whichever node came first; 5 reasons > 4 shown
    assert summarize(["c", "b", "a", "b"]) == "2 b, 1 a, 1 c"
    assert summarize(["e", "d", "c", "b", "a"]) == "1 a, 1 b, 1 c, 1 d, 1 more reasons"


def test_view_age_and_assumed_pods_are_read_at_each_scrape() -> None:
    service, _ = offline_service([gpu_node("n0", 2)])
    sample = service.metrics.registry.get_sample_value
    assert sample("gpusched_assumed_pods") == 0.0
    service.state.upsert_pod(pod("p", 1))
    assert bind(service, pod("p", 1), "n0").error == ""
    assert sample("gpusched_assumed_pods") == 1.0  # bound by gpusched, not shown bound by the API yet
    service.state.bind_outcome_unknown("default/p")  # held for ASSUME_TTL_S only
    clock = service.state.clock
    service.state.clock = lambda: clock() + ASSUME_TTL_S + 1.0
    assert sample("gpusched_assumed_pods") == 0.0  # its hold lapsed: not counted, no decision needed
    service.state.clock = clock
    service.last_change_at -= 100.0  # the last change seen, 100 s earlier
    assert (sample("gpusched_snapshot_age_seconds") or 0.0) >= 100.0
    service.state.mark_changed()
    assert (sample("gpusched_snapshot_age_seconds") or 0.0) < 100.0  # a scrape sees the change itself


def test_a_member_waits_for_its_pod_group_and_is_planned_once_it_arrives() -> None:
    service, _ = offline_service([gpu_node("a", 8), gpu_node("b", 8)])
    members = [pod(f"t-{r}", 8, labels={GANG: "t", RANK: str(r)}) for r in range(2)]  # no min-member
    for obj in members:
        service.state.upsert_pod(obj)
    early = filter_(service, members[0], ["a", "b"])
    # An Error, not Unschedulable: kube-scheduler retries after its backoff, and no cluster event
    # it watches would announce the PodGroup.
    why = "gang t: no gpusched.io/min-member annotation, and no PodGroup (scheduling.x-k8s.io) 't' in namespace default"
    assert early.error == f"gpusched: {why} (yet)" and not early.node_names and reservations(service) == {}
    group = {"metadata": {"name": "t", "namespace": "default"}, "spec": {"minMember": 2}}
    service.state.upsert_group_size(PLUGINS_POD_GROUP, group, plugins_pod_group_size)
    planned = filter_(service, members[0], ["a", "b"])
    assert planned.error == "" and len(planned.node_names) == 1
    assert sorted(planned_nodes(service).values()) == ["a", "b"]  # both ranks reserved, one per node


def test_a_kubernetes_pod_group_with_the_basic_policy_is_no_gang() -> None:
    service, _ = offline_service([gpu_node("a", 8), gpu_node("b", 8)])
    obj = pod("solo", 8)
    obj["spec"]["schedulingGroup"] = {"podGroupName": "web"}
    service.state.upsert_pod(obj)
    group = {"metadata": {"name": "web", "namespace": "default"}, "spec": {"schedulingPolicy": {"basic": {}}}}
    service.state.upsert_group_size(K8S_POD_GROUP, group, k8s_pod_group_size)
    assert filter_(service, obj, ["a", "b"]).node_names == ["a", "b"]  # placed as a lone pod
    assert reservations(service) == {}
