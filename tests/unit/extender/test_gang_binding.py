"""Gangs are bound whole or not at all, across any interleaving of filter, bind, informer lag,
extender crashes (mid-bind included), restarts and expiry.

The API server is a dict of Pod objects behind the Binder protocol (annotate, Binding); the
informer delivers its changes only when the run says so; a crash is an exception that escapes
the extender at a chosen API write, after which a new extender lists the API and carries on.
kube-scheduler is played by the run: it filters a pod over every node and binds it to the node
the filter passed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.podspec import ANN_GANG_PLAN, ANN_GPU_IDS
from scheduler.core.types import NodeState
from scheduler.extender import wire
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.kube import KubeError
from scheduler.state.store import ClusterState
from tests.builders import gpu_node, pod

GANG = "scheduling.x-k8s.io/pod-group"
RANK = "batch.kubernetes.io/job-completion-index"
LEAF = "network.topology.nvidia.com/leaf"
NODES: list[NodeState] = [gpu_node(f"n{i}", 8, labels={LEAF: f"leaf{i // 2}"}) for i in range(6)]
NAMES = [n.name for n in NODES]
# Gang a: 2 x 8 GPUs; gang b: 3 x 4 GPUs; one plain pod of 2 GPUs. They fit together in any order
# of arrival: b and the plain pod touch at most 4 of the 6 nodes, which leaves a its 2 whole nodes.
GANGS = {"a": (2, 8), "b": (3, 4)}
PODS: list[dict[str, Any]] = [
    pod(f"{g}-{r}", gpus, {"gpusched.io/min-member": str(size)}, labels={GANG: g, RANK: str(r)})
    for g, (size, gpus) in GANGS.items()
    for r in range(size)
] + [pod("plain", 2)]


class Crash(BaseException):
    """The extender process dies here (not an Exception: nothing in the extender catches it)."""


class Api:
    """Pods as the API server holds them, with writes that can be made to crash the caller."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {f"default/{p['metadata']['name']}": copy.deepcopy(p) for p in PODS}
        self.changed: list[dict[str, Any]] = []  # what the informer has not delivered yet
        self.crash_in: int | None = None  # crash at this many writes from now
        self.failed_writes = 0

    def _write(self) -> None:
        if self.crash_in is not None:
            if self.crash_in == 0:
                self.crash_in = None
                raise Crash()
            self.crash_in -= 1

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.pods.get(f"{namespace}/{name}")

    def annotate(self, namespace: str, name: str, uid: str, annotations: dict[str, str]) -> None:
        self._write()
        obj = self.pods[f"{namespace}/{name}"]
        obj["metadata"]["annotations"].update(annotations)
        self.changed.append(copy.deepcopy(obj))

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        self._write()
        obj = self.pods[f"{namespace}/{name}"]
        if obj["spec"].get("nodeName"):
            raise KubeError(409, f"pod {name} is already assigned to node {obj['spec']['nodeName']}")
        obj["spec"]["nodeName"] = node
        obj["metadata"]["annotations"].update(annotations)
        self.changed.append(copy.deepcopy(obj))


class Cluster:
    """The API, one extender process at a time, and kube-scheduler's last filter answers."""

    def __init__(self) -> None:
        self.api = Api()
        self.now = 1000.0
        self.crashes = 0
        self.service = self._start()
        self.passed: dict[str, str] = {}  # pod name -> node its last filter passed

    def _start(self) -> ExtenderService:
        # The nodes' reports are static here: they must not go stale while the run's clock jumps.
        config = registry.config_from({"reportTTLSeconds": 10**6})
        state = ClusterState(config, clock=lambda: self.now)
        state.load_static(NODES, [])
        state.replace_pods([copy.deepcopy(o) for o in self.api.pods.values()])
        self.api.changed.clear()  # the new process listed everything
        return ExtenderService(state, registry.build(config), self.api, ExtenderMetrics())

    def restart(self) -> None:
        self.service = self._start()
        self.passed = {}

    def sync(self) -> None:
        for obj in self.api.changed:
            self.service.state.upsert_pod(obj)
        self.api.changed.clear()

    def filter(self, name: str) -> None:
        obj = self.api.pods[f"default/{name}"]
        if obj["spec"].get("nodeName"):
            return
        try:
            answer = self.service.filter(wire.ExtenderArgs(pod=copy.deepcopy(obj), node_names=list(NAMES)))
        except Crash:
            self.crashes += 1
            self.restart()
            return
        if answer.node_names:
            self.passed[name] = answer.node_names[0]
        else:
            self.passed.pop(name, None)

    def bind(self, name: str) -> None:
        obj = self.api.pods[f"default/{name}"]
        node = self.passed.pop(name, None)
        if node is None or obj["spec"].get("nodeName"):
            return
        meta = obj["metadata"]
        try:
            self.service.bind(wire.ExtenderBindingArgs(meta["name"], "default", meta["uid"], node))
        except Crash:
            self.crashes += 1
            self.restart()

    # ------------------------------------------------------------------ what the API shows
    def bound(self) -> dict[str, str]:
        return {k: o["spec"]["nodeName"] for k, o in self.api.pods.items() if o["spec"].get("nodeName")}

    def check(self) -> None:
        """Invariants read from the API, and gpusched's own count: every GPU once, in every state
        a gang passes through (reserved, assumed, bound in the API, informer late or not)."""
        assert self.service.state.snapshot().over_committed() == []
        used: dict[str, list[int]] = {}
        for obj in self.api.pods.values():
            node = obj["spec"].get("nodeName")
            if node:
                ids = [int(x) for x in obj["metadata"]["annotations"][ANN_GPU_IDS].split(",")]
                used.setdefault(node, []).extend(ids)
        for node, ids in used.items():
            assert len(ids) == len(set(ids)) and len(ids) <= 8, f"{node} over-committed: {sorted(ids)}"
        for group, (size, _) in GANGS.items():
            members = [self.api.pods[f"default/{group}-{r}"] for r in range(size)]
            bound = [m for m in members if m["spec"].get("nodeName")]
            if 0 < len(bound) < size:
                # Partly bound only after a crash or failure mid-binding, and then every member
                # carries the plan the bound ones were bound under: a restarted extender completes it.
                plans = {m["metadata"]["annotations"].get(ANN_GANG_PLAN) for m in members}
                assert len(plans) == 1 and None not in plans, f"gang {group} partly bound without its plan"


ACTIONS = st.one_of(
    # One pass of kube-scheduler over every pending pod (filter, then bind), in a drawn order.
    st.tuples(st.just("round"), st.permutations([p["metadata"]["name"] for p in PODS]).map(",".join)),
    st.tuples(st.just("filter"), st.sampled_from([p["metadata"]["name"] for p in PODS])),
    st.tuples(st.just("bind"), st.sampled_from([p["metadata"]["name"] for p in PODS])),
    st.tuples(st.just("sync"), st.just("")),
    st.tuples(st.just("restart"), st.just("")),
    st.tuples(st.just("crash"), st.sampled_from([str(k) for k in range(8)])),
    st.tuples(st.just("tick"), st.sampled_from(["5", "60", "200"])),
)


def drain(cluster: Cluster) -> None:
    """kube-scheduler keeps retrying every pending pod; nothing fails any more."""
    cluster.api.crash_in = None
    for _ in range(6):
        cluster.sync()
        for obj in PODS:
            name = obj["metadata"]["name"]
            cluster.filter(name)
            cluster.bind(name)
            cluster.check()


@settings(max_examples=100, deadline=None)
@given(st.lists(ACTIONS, max_size=20))
def test_any_interleaving_binds_every_gang_whole_or_not_at_all(actions: list[tuple[str, str]]) -> None:
    cluster = Cluster()
    for action, arg in actions:
        if action == "round":
            for name in arg.split(","):
                cluster.filter(name)
                cluster.bind(name)
                cluster.check()
        elif action == "filter":
            cluster.filter(arg)
        elif action == "bind":
            cluster.bind(arg)
        elif action == "sync":
            cluster.sync()
        elif action == "restart":
            cluster.restart()
        elif action == "crash":
            cluster.api.crash_in = int(arg)
        else:
            cluster.now += float(arg)
        cluster.check()
    drain(cluster)
    # Everything fits the empty cluster: every pod ends up bound (no deadlock, no gang left half).
    assert sorted(cluster.bound()) == sorted(f"default/{p['metadata']['name']}" for p in PODS)


def test_without_crashes_a_gang_is_never_partly_bound_between_calls() -> None:
    cluster = Cluster()
    order = ["a-0", "b-0", "a-1", "b-1", "plain", "b-2"]
    for name in order:
        cluster.filter(name)
    for name in order:
        cluster.bind(name)
        bound = cluster.bound()
        # After each bind call: a gang has none or all of its members bound.
        for group, (size, _) in GANGS.items():
            assert sum(k.startswith(f"default/{group}-") for k in bound) in (0, size)
    drain(cluster)
    assert len(cluster.bound()) == len(PODS)
