"""gpu-fit (filter): enough usable GPUs, and enough of the node's allocatable count left."""

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
from scheduler.plugins.gpu_fit import GpuFit
from tests.builders import GiB, gpu_node, mig_gpu, mig_pod, pod, reported_node, whole_gpu


def req(
    gpus: int = 0,
    milli: int = 0,
    memory_gib: int = 0,
    models: tuple[str, ...] = (),
    name: str = "p",
    node: str = "",
    gpu_ids: tuple[int, ...] = (),
) -> PodRequest:
    return PodRequest(
        "default",
        name,
        gpu_count=gpus,
        gpu_milli=milli,
        gpu_memory=memory_gib * GiB,
        gpu_models=models,
        node_name=node,
        gpu_ids=gpu_ids,
    )


def holding(node: str, *gpu_ids: int, milli: int = 0) -> PodRequest:
    """A pod bound to `node` that holds the given GPUs (a `milli` share of each one, else whole)."""
    return req(
        0 if milli else len(gpu_ids),
        milli,
        name=f"held-{node}-{'-'.join(map(str, gpu_ids))}",
        node=node,
        gpu_ids=gpu_ids,
    )


H100_BYTES = 85_520_809_984  # an H100 80GB's memory as NVML reports it (gpu_agent/fake_nvml/machines/dgx-h100.json)


def sized(name: str, model: str, memory_bytes: int, gpus: int = 8) -> NodeState:
    """A node of `gpus` GPUs of `model` with `memory_bytes` each."""
    return replace(gpu_node(name, gpus), gpus=tuple(GpuInfo(i, model, memory_bytes) for i in range(gpus)))


def mixed(name: str = "mixed") -> NodeState:
    """8 GPUs: 0 and 1 of 80 GiB, the others of 40 GiB."""
    gpus = tuple(GpuInfo(i, "X", (80 if i < 2 else 40) * GiB) for i in range(8))
    return replace(gpu_node(name), gpus=gpus)


def run(nodes: list[NodeState], p: PodRequest, pods: tuple[PodRequest, ...] = ()) -> tuple[list[bool], dict[str, str]]:
    snap = ClusterSnapshot(nodes, pods)
    cycle = Cycle(snap, p, SchedulerConfig())
    plugin = GpuFit.create(None, None)
    every = np.arange(len(nodes))
    ok = np.asarray(plugin.filter(cycle, every), dtype=bool)
    reasons = {snap.names[i]: plugin.reason(cycle, int(i)) for i in every[~ok]}
    # The grouped wording (each situation worded once) gives every node its own reason.
    assert plugin.reasons(cycle, every[~ok]) == list(reasons.values())
    return ok.tolist(), reasons


# ----------------------------------------------------------------- filter and reasons
@pytest.mark.parametrize(
    ("nodes", "p", "pods", "ok", "reasons"),
    [
        pytest.param([gpu_node("a")], req(1), (), [True], {}, id="idle node fits"),
        pytest.param(
            [replace(gpu_node("a"), ready=False), replace(gpu_node("b"), schedulable=False)],
            req(1),
            (),
            [False, False],
            {"a": "node is not Ready or is cordoned", "b": "node is not Ready or is cordoned"},
            id="not ready or cordoned",
        ),
        pytest.param(
            [replace(gpu_node("a"), ready=False), gpu_node("b")],
            req(),
            (),
            [False, True],
            {"a": "node is not Ready or is cordoned"},
            id="a cpu-only pod still needs a ready node",
        ),
        pytest.param(
            [gpu_node("full", gpus=2)],
            req(),
            (holding("full", 0, 1),),
            [True],
            {},
            id="a cpu-only pod ignores GPUs",
        ),
        pytest.param(
            [gpu_node("a", gpus=4)],
            req(2),
            (holding("a", 0, 1, 2),),
            [False],
            # allocatable 4 - 3 requested = 1 left < 2
            {"a": "needs 2 GPUs, 1 of 4 allocatable left"},
            id="allocatable count short",
        ),
        pytest.param(
            [gpu_node("a", gpus=8)],
            req(1),
            (holding("a", *range(8)),),
            [False],
            {"a": "needs 1 GPU, 0 of 8 allocatable left"},  # 8 - 8 = 0 < 1
            id="every GPU taken",
        ),
        pytest.param(
            [replace(gpu_node("a", gpus=4), gpu_count=2)],
            req(3),
            (),
            [False],
            # 4 GPUs reported, but the Node object allows 2: 2 - 0 = 2 < 3
            {"a": "needs 3 GPUs, 2 of 2 allocatable left"},
            id="the node object's allocatable count wins over the report",
        ),
        pytest.param(
            [
                replace(
                    gpu_node("a", gpus=2),
                    gpus=(GpuInfo(0, "H100-80GB", 80 * GiB), GpuInfo(1, "H100-80GB", 80 * GiB, healthy=False)),
                )
            ],
            req(2),
            (),
            [False],
            {"a": "needs 2 GPUs, 1 free and healthy"},  # GPU 1 unhealthy: 2 - 1 = 1 usable < 2
            id="unhealthy GPU does not count",
        ),
        pytest.param(
            [gpu_node("a", gpus=2), gpu_node("b", gpus=2)],
            req(milli=500),
            (holding("a", 0, milli=700), holding("a", 1, milli=700), holding("b", 0, milli=400)),
            [False, True],
            # a: 1000 - 700 = 300 free on each GPU < 500; b: GPU 0 has 1000 - 400 = 600 >= 500
            {"a": "needs a 500/1000 share of a GPU, largest free share is 300/1000"},
            id="share needs a GPU with that much free",
        ),
        pytest.param(
            [gpu_node("a", gpus=2)],
            req(1),
            (holding("a", 0, milli=100), holding("a", 1, milli=100)),
            [False],
            # shares do not count against the allocatable count (2 - 0 = 2), but no GPU is wholly free
            {"a": "needs 1 GPU, 0 free and healthy"},
            id="partly used GPUs are not whole GPUs",
        ),
        pytest.param(
            [gpu_node("h100", model="H100-80GB"), gpu_node("a100", model="A100-40GB", memory_gib=40)],
            req(1, models=("A100-40GB", "L4")),
            (),
            [False, True],
            {"h100": "needs 1 GPU of model A100-40GB|L4, node has H100-80GB"},
            id="model not allowed",
        ),
        pytest.param(
            [sized("h100", "NVIDIA H100 80GB HBM3", H100_BYTES), sized("nvl", "NVIDIA H100 NVL", 94 * GiB)],
            req(1, models=("H100",)),
            (),
            [True, False],
            {"nvl": "needs 1 GPU of model H100, node has NVIDIA H100 NVL"},  # NVL is a product of its own
            id="model as users write it",
        ),
        pytest.param(
            [sized("h100", "NVIDIA H100 80GB HBM3", H100_BYTES), sized("gfd", "NVIDIA H100 80GB HBM3", H100_BYTES)],
            req(1, models=("NVIDIA-H100-80GB-HBM3",)),  # GPU Feature Discovery's label form
            (),
            [True, True],
            {},
            id="model in GFD's label form",
        ),
        pytest.param(
            [sized("h100", "NVIDIA H100 80GB HBM3", H100_BYTES)],
            req(1, memory_gib=80),
            (),
            [False],
            # 85,520,809,984 bytes / 2**30 = 79.65 GiB < 80 GiB: "80GB" is 80e9 bytes, not 80 GiB
            {"h100": "needs 1 GPU with 80.0GiB each, 0 free have it (largest 79.6GiB, NVIDIA H100 80GB HBM3)"},
            id="memory just above the GPU's real size",
        ),
        pytest.param(
            [sized("a", "X", 80 * GiB - 2**20)],
            req(1, memory_gib=80),
            (),
            [False],
            # 80 GiB - 1 MiB = 79.999 GiB: rounded down, never shown as the 80.0 it lacks
            {"a": "needs 1 GPU with 80.0GiB each, 0 free have it (largest 79.9GiB, X)"},
            id="memory a hair short",
        ),
        pytest.param(
            [gpu_node("h100"), gpu_node("a100", model="A100-40GB", memory_gib=40)],
            req(1, memory_gib=60),
            (),
            [True, False],
            # 40 GiB < 60 GiB on every GPU of a100
            {"a100": "needs 1 GPU with 60.0GiB each, 0 free have it (largest 40.0GiB, A100-40GB)"},
            id="memory floor",
        ),
        pytest.param(
            [gpu_node("x", model="A100-80GB"), gpu_node("y", model="H100-80GB")],
            req(1, memory_gib=90),
            (),
            [False, False],
            # both 80 GiB < 90 GiB, in the same situation but for the model each reason names
            {
                "x": "needs 1 GPU with 90.0GiB each, 0 free have it (largest 80.0GiB, A100-80GB)",
                "y": "needs 1 GPU with 90.0GiB each, 0 free have it (largest 80.0GiB, H100-80GB)",
            },
            id="memory floor on two models of one size",
        ),
        pytest.param(
            [mixed()],
            req(4, memory_gib=60),
            (),
            [False],
            # only GPUs 0 and 1 have 80 GiB >= 60 GiB: 2 < 4
            {"mixed": "needs 4 GPUs with 60.0GiB each, 2 free have it (largest 80.0GiB, X)"},
            id="memory floor met by too few GPUs",
        ),
        pytest.param([mixed()], req(2, memory_gib=60), (), [True], {}, id="memory floor met by just enough GPUs"),
        pytest.param(
            [gpu_node("bare", report_age_s=None)], req(8), (), [True], {}, id="no report: allocatable count alone"
        ),
        pytest.param(
            [gpu_node("bare", report_age_s=None)],
            req(1, models=("H100-80GB",)),
            (),
            [False],
            {"bare": "needs GPU model H100-80GB, model unknown (no GPUNodeReport)"},
            id="no report: a named model does not fit",
        ),
        pytest.param(
            [gpu_node("bare", report_age_s=None)],
            req(1, memory_gib=10),
            (),
            [False],
            {"bare": "needs 10.0GiB per GPU, GPU memory unknown (no GPUNodeReport)"},
            id="no report: a memory floor does not fit",
        ),
    ],
)
def test_filter_and_reasons(
    nodes: list[NodeState], p: PodRequest, pods: tuple[PodRequest, ...], ok: list[bool], reasons: dict[str, str]
) -> None:
    assert run(nodes, p, pods) == (ok, reasons)


def test_pod_annotations_reach_the_filter() -> None:
    p = parse_pod(pod("p", 2, {"gpusched.io/gpu-models": "A100-40GB", "gpusched.io/gpu-memory": "30Gi"}))
    nodes = [
        gpu_node("h100"),
        gpu_node("a100", model="A100-40GB", memory_gib=40),
        gpu_node("a100-2", 2, "A100-40GB", 20),
    ]
    ok, reasons = run(nodes, p)
    assert ok == [False, True, False]
    assert reasons == {
        "h100": "needs 2 GPUs of model A100-40GB, node has H100-80GB",
        "a100-2": "needs 2 GPUs with 30.0GiB each, 0 free have it (largest 20.0GiB, A100-40GB)",  # 20 GiB < 30 GiB
    }


# ----------------------------------------------------------------- resolvable (preemption)
@pytest.mark.parametrize(
    ("node", "p", "pods", "expected"),
    [
        pytest.param(gpu_node("a", gpus=2), req(2), (holding("a", 0, 1),), True, id="evicting frees the GPUs"),
        pytest.param(
            gpu_node("a", gpus=2), req(milli=600), (holding("a", 0, 1, milli=500),), True, id="evicting frees a share"
        ),
        pytest.param(gpu_node("a", gpus=2), req(4), (), False, id="allocatable 2 < 4 whatever is evicted"),
        pytest.param(
            gpu_node("a", model="A100-40GB", memory_gib=40), req(1, memory_gib=60), (), False, id="memory never enough"
        ),
        pytest.param(
            gpu_node("a"), req(1, models=("L4",)), (holding("a", *range(8)),), False, id="model never allowed"
        ),
        pytest.param(replace(gpu_node("a"), ready=False), req(1), (), False, id="not ready"),
    ],
)
def test_resolvable(node: NodeState, p: PodRequest, pods: tuple[PodRequest, ...], expected: bool) -> None:
    snap = ClusterSnapshot([node], pods)
    cycle = Cycle(snap, p, SchedulerConfig())
    plugin = GpuFit.create()
    assert not plugin.filter(cycle, np.arange(1))[0]
    assert plugin.resolvable(cycle, 0) is expected


# ----------------------------------------------------------------- args
@pytest.mark.parametrize("args", [{"foo": 1}, {"requireReport": True}])
def test_takes_no_args(args: dict[str, Any]) -> None:
    key = next(iter(args))
    with pytest.raises(ConfigError, match=rf"pluginArgs gpu-fit\.{key}: unknown argument"):
        GpuFit.create(args)


# ----------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(1, 8),  # GPUs
            st.sampled_from([24, 40, 80]),  # GiB each
            st.sets(st.integers(0, 7)),  # GPUs held whole
            st.integers(0, 999),  # share held on the first free GPU
            st.booleans(),  # has a report
        ),
        min_size=1,
        max_size=5,
    ),
    gpus=st.integers(0, 8),
    milli=st.sampled_from([0, 0, 250, 600]),
    memory_gib=st.sampled_from([0, 30, 60]),
    models=st.sampled_from([(), ("M40",), ("M80", "M24")]),
)
def test_a_pod_that_passes_can_be_placed_and_rejections_have_reasons(
    rows: list[tuple[int, int, set[int], int, bool]], gpus: int, milli: int, memory_gib: int, models: tuple[str, ...]
) -> None:
    nodes, pods = [], []
    for i, (count, gib, held, share, reported) in enumerate(rows):
        nodes.append(gpu_node(f"n{i}", count, f"M{gib}", gib, report_age_s=0.0 if reported else None))
        whole = tuple(sorted(g for g in held if g < count))
        if whole:
            pods.append(holding(f"n{i}", *whole))
        rest = [g for g in range(count) if g not in whole]
        if share and rest:
            pods.append(holding(f"n{i}", rest[0], milli=share))
    p = req(0 if milli else gpus, milli, memory_gib, models)
    snap = ClusterSnapshot(nodes, pods)
    cycle = Cycle(snap, p, SchedulerConfig())
    plugin = GpuFit.create()
    every = np.arange(len(nodes))
    ok = plugin.filter(cycle, every)
    assert ok.dtype == bool and ok.shape == (len(nodes),)
    for node in every:
        if ok[node]:
            # It fits: its eligible GPUs take it without over-committing, and eviction would not be needed.
            chosen = tuple(int(g) for g in np.flatnonzero(cycle.eligible(every)[node])[: p.gpus_needed])
            assert len(chosen) == p.gpus_needed
            snap.place(replace(p, name=f"try-{node}"), int(node), chosen or None)
            assert snap.over_committed() == []
            snap.remove(f"default/try-{node}")
            assert plugin.resolvable(cycle, int(node))
        else:
            reason = plugin.reason(cycle, int(node))
            assert reason.startswith(("needs ", "node is not Ready")) and not reason.endswith("too few usable")


# ----------------------------------------------------------------- MIG
# The finding: one H100 NVL (93.03 GiB usable) split into 3g.47gb, 2g.24gb and two 1g.12gb
# instances, all held but one 1g.12gb slice; the Node object still counts the GPU as nvidia.com/gpu.
SLICED = [mig_gpu(0, [("3g.47gb", ["ml/a"]), ("2g.24gb", ["ml/b"]), ("1g.12gb", ["ml/c"]), ("1g.12gb", [])])]


@pytest.mark.parametrize(
    ("nodes", "p", "ok", "reasons"),
    [
        pytest.param(
            [reported_node("sliced", SLICED, allocatable_gpus=1)],
            req(1, memory_gib=80),
            [False],
            # 93.03 GiB >= 80 GiB and allocatable 1 - 0 = 1, but the GPU is MIG-enabled: 0 whole GPUs
            {"sliced": "needs 1 GPU, 0 free and healthy; 1 MIG-enabled (whole-GPU pods cannot use them)"},
            id="a whole-GPU pod asking 80Gi never gets a 12 GB slice's GPU",
        ),
        pytest.param(
            [reported_node("sliced", SLICED, allocatable_gpus=1)],
            req(milli=300),
            [False],
            {
                "sliced": "needs a 300/1000 share of a GPU, largest free share is 0/1000; 1 MIG-enabled"
                " (whole-GPU pods cannot use them)"
            },
            id="nor does a share",
        ),
        pytest.param(
            [reported_node("half", [*SLICED, whole_gpu(1)], allocatable_gpus=2)],
            req(2),
            [False],
            # GPU 1 whole and free, GPU 0 MIG-enabled: 1 < 2
            {"half": "needs 2 GPUs, 1 free and healthy; 1 MIG-enabled (whole-GPU pods cannot use them)"},
            id="only the GPU without MIG counts",
        ),
        pytest.param(
            [reported_node("half", [*SLICED, whole_gpu(1)], allocatable_gpus=2)], req(1), [True], {}, id="and fits one"
        ),
        pytest.param(
            [reported_node("sliced", SLICED)],
            parse_pod(mig_pod("m", count=2)),
            [False],
            {"sliced": "needs 2 x MIG 1g.12gb, 1 free"},  # two 1g.12gb instances - 1 the report says is held
            id="MIG pod: too few free instances of its profile",
        ),
        pytest.param([reported_node("sliced", SLICED)], parse_pod(mig_pod("m")), [True], {}, id="MIG pod fits"),
        pytest.param(
            [reported_node("sliced", SLICED)],
            parse_pod(mig_pod("m", "7g.94gb")),
            [False],
            {"sliced": "needs 1 x MIG 7g.94gb, node has none"},
            id="MIG pod: no instance of its profile",
        ),
        pytest.param(
            [gpu_node("plain", 2), gpu_node("blind", 2, report_age_s=None)],
            parse_pod(mig_pod("m")),
            [False, False],
            {
                "plain": "needs 1 x MIG 1g.12gb, node has none (no MIG-enabled GPU)",
                "blind": "needs 1 x MIG 1g.12gb, MIG instances unknown (no GPUNodeReport)",
            },
            id="MIG pod: whole GPUs only, or no report",
        ),
        pytest.param(
            [reported_node("sliced", [mig_gpu(0, [("1g.12gb", [])], healthy=False)])],
            parse_pod(mig_pod("m")),
            [False],
            {"sliced": "needs 1 x MIG 1g.12gb, node has none"},  # the GPU is unhealthy: its instance does not count
            id="MIG pod: an unhealthy GPU's instance",
        ),
    ],
)
def test_mig_filter_and_reasons(nodes: list[NodeState], p: PodRequest, ok: list[bool], reasons: dict[str, str]) -> None:
    assert run(nodes, p) == (ok, reasons)
    snap = ClusterSnapshot(nodes)
    every = np.arange(len(nodes))
    cycle = Cycle(snap, p, SchedulerConfig())
    refused = every[~GpuFit.create().filter(cycle, every)]
    # The batch wording (one per distinct situation) says what each node's own reason says.
    assert GpuFit.create().reasons(cycle, refused) == [reasons[snap.names[i]] for i in refused]


def test_mig_pods_placed_one_by_one_take_the_free_instances_then_stop() -> None:
    snap = ClusterSnapshot([reported_node("sliced", SLICED), reported_node("two", [mig_gpu(0, [("1g.12gb", [])] * 2)])])
    plugin, every = GpuFit.create(), np.arange(2)
    fits = []
    for i in range(4):
        p = parse_pod(mig_pod(f"m{i}"))
        ok = plugin.filter(Cycle(snap, p, SchedulerConfig()), every)
        fits.append(ok.tolist())
        if ok.any():
            snap.place(p, int(np.flatnonzero(ok)[-1]))  # the last node that fits
    # sliced has 1 free 1g.12gb, two has 2: three pods fit, the fourth none
    assert fits == [[True, True], [True, True], [True, False], [False, False]]
    assert snap.over_committed() == [] and snap.mig_free_of("1g.12gb").tolist() == [0, 0]


@pytest.mark.parametrize(
    ("node", "p", "pods", "expected"),
    [
        pytest.param(
            reported_node("n", [mig_gpu(0, [("1g.12gb", [])])]),
            parse_pod(mig_pod("m")),
            (parse_pod(mig_pod("held", node="n")),),
            True,
            id="evicting the holder frees the instance",
        ),
        pytest.param(
            reported_node("n", [mig_gpu(0, [("1g.12gb", [])])]),
            parse_pod(mig_pod("m", count=2)),
            (),
            False,
            id="1 instance < 2 whatever is evicted",
        ),
    ],
)
def test_mig_resolvable(node: NodeState, p: PodRequest, pods: tuple[PodRequest, ...], expected: bool) -> None:
    snap = ClusterSnapshot([node], pods)
    cycle = Cycle(snap, p, SchedulerConfig())
    plugin = GpuFit.create()
    assert not plugin.filter(cycle, np.arange(1))[0]
    assert plugin.resolvable(cycle, 0) is expected
    assert plugin.resolvable_nodes(cycle, np.arange(1)).tolist() == [expected]
