from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState, PodRequest
from scheduler.plugins import registry
from scheduler.plugins.inference_fit import InferenceFit, replica_shape
from tests.builders import GiB, gpu_node, pod

MODEL = "meta-llama/Llama-3.1-70B@main"
ZONE, RACK = "topology.kubernetes.io/zone", "network.topology.nvidia.com/leaf"


def h100(name: str = "h100", **kw: Any) -> NodeState:
    return gpu_node(name, 8, "H100-80GB", 80, **kw)


def a100(name: str = "a100", **kw: Any) -> NodeState:
    return gpu_node(name, 8, "A100-40GB", 40, "nvlink-pairs", **kw)


def mixed(name: str = "mixed") -> NodeState:
    gpus = tuple(GpuInfo(i, "X", (80 if i < 2 else 40) * GiB) for i in range(8))
    return replace(gpu_node(name), gpus=gpus)


def replica(
    gpus: int = 1,
    model_gib: int | None = None,
    owner: str = "",
    namespace: str = "default",
    name: str = "srv",
    node: str | None = None,
    image: str = "registry.k8s.io/pause:3.10",
    **annotations: str,
) -> PodRequest:
    """A replica of MODEL; keyword annotations name gpusched.io keys with underscores (kv_cache=...)."""
    ann = {"gpusched.io/model": MODEL}
    ann |= {"gpusched.io/" + k.replace("_", "-"): v for k, v in annotations.items()}
    if model_gib is not None:
        ann["gpusched.io/model-bytes"] = f"{model_gib}Gi"
    obj = pod(name, gpus, ann, namespace=namespace, node=node, image=image)
    if owner:
        kind, _, ref = owner.partition("/")
        obj["metadata"]["ownerReferences"] = [{"kind": kind, "name": ref, "controller": True}]
    return parse_pod(obj)


def plugin(args: dict[str, Any] | None = None) -> InferenceFit:
    return InferenceFit.create(args)


def run(nodes: list[NodeState], p: PodRequest, args: dict[str, Any] | None = None, pods: tuple = ()) -> tuple:
    snap = ClusterSnapshot(nodes, pods)
    cycle = Cycle(snap, p, SchedulerConfig())
    fit = plugin(args)
    every = np.arange(len(nodes))
    ok = fit.filter(cycle, every)
    reasons = {snap.names[i]: fit.reason(cycle, int(i)) for i in every[~ok]}
    return ok.tolist(), reasons, fit.score(cycle, every).tolist()


# ----------------------------------------------------------------- sizing
@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((16 * GiB, 0.2, 80 * GiB), {}, (1, int(np.ceil(16 * GiB * 1.2)))),
        ((140 * 10**9, 0.2, 80 * GiB), {"utilization": 0.9}, (4, 42 * 10**9)),
        ((140 * 10**9, 0.2, 80 * GiB), {"utilization": 0.9, "power_of_two": False}, (3, 56 * 10**9)),
        ((40 * GiB, 0.0, 40 * GiB), {}, (1, 40 * GiB)),
        ((40 * GiB + 1, 0.0, 40 * GiB), {"power_of_two": False}, (2, 20 * GiB + 1)),
        ((140 * 10**9, 0.2, 0), {}, (0, 168 * 10**9)),
        ((0, 0.2, 80 * GiB), {}, (0, 0)),
    ],
)
def test_replica_shape(args: tuple[int, float, int], kwargs: dict[str, Any], expected: tuple[int, int]) -> None:
    assert replica_shape(*args, **kwargs) == expected


def test_kv_cache_annotation_parses() -> None:
    assert replica(1, 16, kv_cache="20Gi").kv_cache_bytes == 20 * GiB
    bad = replica(1, 16, kv_cache="lots")
    assert bad.kv_cache_bytes == 0 and "gpusched.io/kv-cache" in bad.errors[0]


# ----------------------------------------------------------------- filter
@pytest.mark.parametrize(
    ("case", "nodes", "p", "args", "ok", "reason"),
    [
        (
            "does not fit 40 GiB GPUs at 2",
            [a100()],
            replica(2, 125),
            {},
            [False],
            "model needs 150.0GiB (125.0GiB weights + 25.0GiB KV cache) over 2 GPUs (75.0GiB each),"
            " largest GPU 40.0GiB (36.0GiB usable at 90%)",
        ),
        ("80 GiB GPUs at 90% are short too", [h100()], replica(2, 125), {}, [False], ""),
        ("at full utilisation they hold it", [h100()], replica(2, 125), {"gpuMemoryUtilization": 1.0}, [True], ""),
        ("four GPUs hold it", [a100(), h100()], replica(4, 125), {}, [False, True], ""),
        ("KV annotation instead of the fraction", [h100()], replica(1, 60, kv_cache="10Gi"), {}, [True], ""),
        (
            "KV annotation too big",
            [h100()],
            replica(1, 60, kv_cache="20Gi"),
            {},
            [False],
            "model needs 80.0GiB (60.0GiB weights + 20.0GiB KV cache) over 1 GPU,"
            " largest GPU 80.0GiB (72.0GiB usable at 90%)",
        ),
        ("a share that holds it", [h100()], replica(0, 25, gpu_milli="500"), {}, [True], ""),
        (
            "a share too small",
            [h100()],
            replica(0, 40, gpu_milli="500"),
            {},
            [False],
            "model needs 48.0GiB (40.0GiB weights + 8.0GiB KV cache) over a 500/1000 share of a GPU,"
            " largest GPU 80.0GiB (36.0GiB for the share at 90% usable)",
        ),
        (
            "only some GPUs of a mixed node are large",
            [mixed()],
            replica(4, 200),
            {},
            [False],
            "model needs 240.0GiB (200.0GiB weights + 40.0GiB KV cache) over 4 GPUs (60.0GiB each),"
            " only 2 of the node's GPUs hold that (largest 80.0GiB)",
        ),
        (
            "no GPU of an allowed model",
            [h100()],
            replica(1, 8, gpu_models="L4"),
            {},
            [False],
            "model needs 9.6GiB (8.0GiB weights + 1.6GiB KV cache) over 1 GPU, node has no GPU that may serve it",
        ),
        ("training pods are not sized", [a100()], replica(1, 125, workload="training"), {}, [True], ""),
        ("unknown model size passes", [a100()], replica(1), {}, [True], ""),
        ("GPU memory unknown (no report) passes", [a100(report_age_s=None)], replica(2, 125), {}, [True], ""),
        ("headroom is an arg", [h100()], replica(1, 70), {"kvCacheFraction": 0.0}, [True], ""),
    ],
)
def test_filter(
    case: str, nodes: list[NodeState], p: PodRequest, args: dict[str, Any], ok: list[bool], reason: str
) -> None:
    got_ok, reasons, _ = run(nodes, p, args)
    assert got_ok == ok, case
    if reason:
        assert reasons[nodes[0].name] == reason


def test_size_from_the_largest_report_when_not_annotated() -> None:
    nodes = [a100(models={MODEL: 125 * GiB}), h100()]
    ok, reasons, _ = run(nodes, replica(2))
    assert ok == [False, False]
    assert reasons["a100"].startswith("model needs 150.0GiB (125.0GiB weights")


def test_filter_is_not_resolvable_by_preemption() -> None:
    snap = ClusterSnapshot([a100()])
    assert not plugin().resolvable(Cycle(snap, replica(2, 125), SchedulerConfig()), 0)


# ------------------------------------------------------------------ shape
@pytest.mark.parametrize(
    ("case", "nodes", "p", "expected"),
    [
        ("split needed on 40 GiB, not on 80 GiB", [h100(), a100()], replica(2, 40), [50.0, 100.0]),
        ("one GPU: fits everywhere", [h100(), a100()], replica(1, 16), [100.0, 100.0]),
        ("four GPUs for a model that fits one", [h100()], replica(4, 16), [25.0]),
        ("unknown GPU memory gets no credit", [h100(), a100(report_age_s=None)], replica(2, 40), [50.0, 0.0]),
        ("no size, no owner: neutral", [h100(), a100()], replica(2), [0.0, 0.0]),
    ],
)
def test_shape_score(case: str, nodes: list[NodeState], p: PodRequest, expected: list[float]) -> None:
    assert run(nodes, p)[2] == pytest.approx(expected), case


def test_shape_uses_the_gpus_the_pod_would_get() -> None:
    # Two free 80 GiB GPUs are taken; the pod's GPUs would be 40 GiB ones, where the split is needed.
    node = mixed()
    held = replica(2, name="big", node="mixed")
    assert run([node], replica(2, 40), pods=(held,))[2] == pytest.approx([100.0])
    assert run([node], replica(2, 40))[2] == pytest.approx([50.0])


# ----------------------------------------------------------------- spread
def spread_nodes() -> list[NodeState]:
    return [
        h100("n0", labels={ZONE: "a", RACK: "r1"}),
        h100("n1", labels={ZONE: "a", RACK: "r1"}),
        h100("n2", labels={ZONE: "a", RACK: "r2"}),
        h100("n3", labels={ZONE: "b", RACK: "r1"}),  # a different r1: racks are qualified by zone
        h100("n4"),  # no labels: alone in each tier
    ]


def test_replicas_spread_over_zones_then_racks() -> None:
    running = (replica(1, owner="ReplicaSet/web", name="web-0", node="n0"),)
    _, _, got = run(spread_nodes(), replica(1, owner="ReplicaSet/web"), pods=running)
    assert got == pytest.approx([0.0, 0.0, 100 * 0.5 / 1.5, 100.0, 100.0])


def test_gke_subblocks_are_racks_with_the_weight_of_the_tier_after_the_zone() -> None:
    subblock = "cloud.google.com/gce-topology-subblock"
    nodes = [
        h100("n0", labels={ZONE: "a", subblock: "s1"}),
        h100("n1", labels={ZONE: "a", subblock: "s1"}),
        h100("n2", labels={ZONE: "a", subblock: "s2"}),
        h100("n3", labels={ZONE: "b", subblock: "s3"}),
    ]
    running = (replica(1, owner="ReplicaSet/web", name="web-0", node="n0"),)
    _, _, got = run(nodes, replica(1, owner="ReplicaSet/web"), pods=running)
    # No node has a leaf label, so the subblock tier weighs 0.5 (not 0.25): n2 = (1 * 0 + 0.5 * 1) / 1.5.
    assert got == pytest.approx([0.0, 0.0, 100 * 0.5 / 1.5, 100.0])


def test_spread_ignores_other_controllers_and_namespaces() -> None:
    running = (
        replica(1, owner="ReplicaSet/web", name="web-0", node="n0", namespace="other"),
        replica(1, owner="ReplicaSet/api", name="api-0", node="n1"),
    )
    _, _, got = run(spread_nodes(), replica(1, owner="ReplicaSet/web"), pods=running)
    assert got == pytest.approx([100.0] * 5)


def test_spread_and_shape_combine_with_their_weights() -> None:
    running = (replica(1, owner="ReplicaSet/web", name="web-0", node="n0"),)
    _, _, got = run(spread_nodes()[:4], replica(2, 40, owner="ReplicaSet/web"), pods=running)
    # shape 0.5 on every H100; spread 0, 0, 1/3, 1; (1 * shape + 0.5 * spread) / 1.5.
    assert got == pytest.approx([100 * (0.5 + 0.5 * s) / 1.5 for s in (0, 0, 1 / 3, 1)])


def test_spread_tiers_are_configurable() -> None:
    running = (replica(1, owner="ReplicaSet/web", name="web-0", node="n0"),)
    _, _, got = run(spread_nodes(), replica(1, owner="ReplicaSet/web"), {"spreadTiers": [RACK]}, pods=running)
    # Without the zone tier racks are not qualified by zone: n3's r1 is n0's and n1's.
    assert got == pytest.approx([0.0, 0.0, 100.0, 0.0, 100.0])


def test_owner_index_follows_place_and_remove() -> None:
    running = [replica(1, owner="ReplicaSet/web", name=f"web-{i}", node="n0") for i in range(2)]
    snap = ClusterSnapshot(spread_nodes(), running)
    assert snap.owner_pods == {"default/ReplicaSet/web": {0: 2}}
    snap.remove("default/web-0")
    snap.remove("default/web-1")
    assert snap.owner_pods == {}


def test_spreading_does_not_give_up_a_warm_cache() -> None:
    cfg = registry.config_from(
        {
            "plugins": {
                "filter": ["gpu-fit", "inference-fit"],
                "score": [{"name": "cold-start", "weight": 3}, {"name": "inference-fit", "weight": 1}],
            }
        }
    )
    fw = registry.build(cfg)
    image = "ghcr.io/acme/llm-server:1.4"
    warm = h100("warm", labels={ZONE: "a"}, images={image: 2 * 10**9}, models={MODEL: 16 * GiB})
    cold = h100("cold", labels={ZONE: "b"})
    running = [replica(1, owner="ReplicaSet/web", name="web-0", node="warm")]
    p = replica(1, owner="ReplicaSet/web", name="web-1", image=image)
    snap = ClusterSnapshot([warm, cold], running)
    assert snap.names[fw.decide(snap, p).best()] == "warm"  # type: ignore[index]
    # With the cache the same everywhere, the spread decides.
    even = ClusterSnapshot(
        [h100("a0", labels={ZONE: "a"}), h100("b0", labels={ZONE: "b"})],
        [replica(1, owner="ReplicaSet/web", name="web-0", node="a0")],
    )
    assert even.names[fw.decide(even, p).best()] == "b0"  # type: ignore[index]


@pytest.mark.parametrize(
    "args",
    [
        {"kvCacheFraction": -0.1},
        {"gpuMemoryUtilization": 0},
        {"gpuMemoryUtilization": 1.5},
        {"spreadTiers": "topology.kubernetes.io/zone"},
        {"spreadTiers": [""]},
        {"shapeWeight": "heavy"},
    ],
)
def test_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        plugin(args)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([24, 40, 80, 141]), st.integers(1, 8), st.integers(0, 3)), min_size=1, max_size=6
    ),
    st.integers(0, 8),
    st.integers(0, 400),
    st.sampled_from(["", "inference", "training"]),
    st.integers(0, 3),
)
def test_filter_and_score_never_fail_and_stay_in_range(
    rows: list[tuple[int, int, int]], gpus: int, model_gib: int, workload: str, replicas_on: int
) -> None:
    nodes = [gpu_node(f"n{i}", n, "G", mem, labels={ZONE: f"z{zone}"}) for i, (mem, n, zone) in enumerate(rows)]
    free = [n for _, n, _ in rows]
    running = []
    for i in range(replicas_on):
        at = i % len(nodes)
        if free[at]:
            free[at] -= 1
            running.append(replica(1, owner="ReplicaSet/web", name=f"web-{i}", node=nodes[at].name))
    extra = {"workload": workload} if workload else {}
    p = replica(gpus, model_gib or None, owner="ReplicaSet/web", **extra)
    ok, reasons, scores = run(nodes, p, pods=tuple(running))
    assert len(ok) == len(nodes)
    assert all(isinstance(r, str) and r for r in reasons.values())
    assert all(0.0 <= s <= 100.0 for s in scores)
