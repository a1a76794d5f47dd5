from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from scheduler.core.config import ConfigError
from scheduler.core.framework import Cycle
from scheduler.core.objects import node_from_object, with_report
from scheduler.core.podspec import parse_pod
from scheduler.core.scenario import ScenarioError, load_nodes
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins import registry
from scheduler.plugins.disk_fit import UNCHECKED, DiskFit
from tests.builders import GiB, gpu_node, node_object, pod, report_object

IMAGE = "ghcr.io/acme/vllm:0.6.3"
MODEL = "meta-llama/Llama-3.1-70B@main"
# A reference node that lists the image (15 GiB) and the weights (70 GiB), so their sizes are known.
REF = gpu_node("ref", images={IMAGE: 15 * GiB}, models={MODEL: 70 * GiB})


def disks(name: str, image_fs: tuple[int, int] | None, cache: tuple[int, int] | None, **kw: Any) -> NodeState:
    """A node with (free, total) GiB of image filesystem and model cache; None: not reported."""
    image_fs = image_fs or (-1, -1)
    cache = cache or (-1, -1)
    node = gpu_node(name, **kw)
    g = {True: GiB, False: 1}
    return replace(
        node,
        image_fs_free=image_fs[0] * g[image_fs[0] >= 0],
        image_fs_total=image_fs[1] * g[image_fs[1] >= 0],
        model_cache_free=cache[0] * g[cache[0] >= 0],
        model_cache_total=cache[1] * g[cache[1] >= 0],
    )


def llm_pod(model: bool = True, image: str = IMAGE) -> PodRequest:
    annotations = {"gpusched.io/model": MODEL} if model else {}
    return parse_pod(pod("srv", 1, annotations, image=image))


def run(nodes: list[NodeState], p: PodRequest, args: dict[str, Any] | None = None) -> tuple[list[bool], Cycle]:
    plugin = DiskFit.create(args)
    snap = ClusterSnapshot([*nodes, REF])
    cycle = Cycle(snap, p, plugin.config)
    mask = plugin.filter(cycle, np.arange(len(nodes), dtype=np.intp))
    return mask.tolist(), cycle


# Default margin = max(1 GiB, 10 % of the disk's total). The pod pulls a 15 GiB image and 70 GiB of weights.
@pytest.mark.parametrize(
    ("case", "node", "expected"),
    [
        # image: 15 + max(1, 10) = 25 <= 30; weights: 70 + max(1, 20) = 90 <= 100
        ("room on both disks", disks("a", (30, 100), (100, 200)), True),
        # image: 15 + 10 = 25 > 24 free
        ("image filesystem short by the margin", disks("a", (24, 100), (100, 200)), False),
        # image: 15 + max(1, 1.6) = 16.6 <= 17 (the 1 GiB floor loses to 10 % of 16 GiB)
        ("small disk, fraction margin", disks("a", (17, 16 + 1), (100, 200)), True),
        # weights: 70 + 20 = 90 > 89
        ("model cache short", disks("a", (30, 100), (89, 200)), False),
        # image cached (0 to pull): the full image filesystem does not matter; weights 90 <= 100
        ("image already on the node", disks("a", (0, 100), (100, 200), images={IMAGE: 15 * GiB}), True),
        # 60 of 70 GiB cached: 10 + 20 = 30 <= 30
        ("partial weights cache", disks("a", (30, 100), (30, 200), models={MODEL: 60 * GiB}), True),
        # no figures at all: not checked
        ("no disk figures", disks("a", None, None), True),
        # image fs unknown: not checked; model cache 90 > 50
        ("only the model cache known, and short", disks("a", None, (50, 200)), False),
        # no report at all
        ("no report", disks("a", None, None, report_age_s=None), True),
    ],
)
def test_filter(case: str, node: NodeState, expected: bool) -> None:
    assert run([node], llm_pod())[0] == [expected], case


@pytest.mark.parametrize(
    ("case", "args", "node", "expected"),
    [
        # margin 0: 15 <= 15 and 70 <= 70
        ("no margin, exact fit", {"marginBytes": 0, "marginFraction": 0}, disks("a", (15, 100), (70, 200)), True),
        # margin max(5 GiB, 0) = 5: 15 + 5 = 20 > 19
        ("absolute margin", {"marginBytes": "5Gi", "marginFraction": 0}, disks("a", (19, 100), (100, 200)), False),
        # image: max(0, 0.5 x 40) = 20, 15 + 20 = 35 <= 35; weights: 0.5 x 200 = 100, 70 + 100 = 170 <= 200
        ("fraction margin", {"marginBytes": 0, "marginFraction": 0.5}, disks("a", (35, 40), (200, 200)), True),
    ],
)
def test_margin_args(case: str, args: dict[str, Any], node: NodeState, expected: bool) -> None:
    assert run([node], llm_pod(), args)[0] == [expected], case


def test_unknown_image_bytes_arg() -> None:
    # An image no node reports counts as unknownImageBytes: 0 by default (passes), 8 GiB when set
    # (8 + max(1, 1) = 9 > 8 free on a 10 GiB disk).
    node = disks("a", (8, 10), None)
    p = llm_pod(model=False, image="ghcr.io/acme/unseen:1")
    assert run([node], p)[0] == [True]
    assert run([node], p, {"unknownImageBytes": "8Gi"})[0] == [False]


def test_pod_that_fetches_nothing_passes_everywhere_without_notes() -> None:
    mask, cycle = run([disks("full", (0, 100), (0, 100)), disks("unknown", None, None)], llm_pod(model=False, image=""))
    assert mask == [True, True]
    assert "disk_fit" not in cycle.notes


def test_fallback_is_noted_for_explain() -> None:
    mask, cycle = run(
        [disks("unknown", None, None), disks("half", (30, 100), None), disks("known", (30, 100), (100, 200))], llm_pod()
    )
    assert mask == [True, True, True]
    assert cycle.note("disk_fit") == {
        "unknown": UNCHECKED.format("image filesystem and model cache"),
        "half": UNCHECKED.format("model cache"),
    }


def test_reason_names_the_sizes() -> None:
    plugin = DiskFit.create()
    snap = ClusterSnapshot([disks("small", (9, 20), (50, 100)), REF])
    cycle = Cycle(snap, llm_pod(), plugin.config)
    # image: 15 + max(1, 2) = 17 > 9; weights: 70 + max(1, 10) = 80 > 50
    assert plugin.reason(cycle, 0) == (
        "image filesystem: needs 15.0 GiB + 2.0 GiB margin, 9.0 GiB free; "
        "model cache: needs 70.0 GiB + 10.0 GiB margin, 50.0 GiB free"
    )
    assert not plugin.resolvable(cycle, 0)


def test_in_the_default_policy_with_reason() -> None:
    framework = registry.build(registry.config_from(None))
    snap = ClusterSnapshot([disks("small", (9, 20), None), disks("big", (500, 1000), None), REF])
    decision = framework.decide(snap, llm_pod(model=False))  # the image alone: 15 + 2 > 9 GiB free
    assert decision.rejected_by == {0: "disk-fit"}
    assert "image filesystem: needs 15.0 GiB" in decision.reasons[0]
    assert snap.names[decision.best() or 0] in ("big", "ref")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"marginBytes": "lots"}, "marginBytes"),
        ({"marginBytes": -1}, "marginBytes"),
        ({"marginFraction": 1.5}, "marginFraction"),
        ({"marginFraction": "0.1"}, "marginFraction"),
        ({"unknownImageBytes": -5}, "unknownImageBytes"),
        ({"marginByte": 1}, "unknown argument"),
    ],
)
def test_bad_args(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.config_from({"pluginArgs": {"disk-fit": args}})


@pytest.mark.parametrize(
    ("case", "disk", "expected"),
    [
        (
            "both disks",
            {"imageFilesystem": {"freeBytes": 10, "totalBytes": 20}, "modelCache": {"freeBytes": 30, "totalBytes": 40}},
            (10, 20, 30, 40),
        ),
        ("image filesystem only", {"imageFilesystem": {"freeBytes": 10, "totalBytes": 20}}, (10, 20, -1, -1)),
        ("model cache only", {"modelCache": {"freeBytes": 0, "totalBytes": 40}}, (-1, -1, 0, 40)),
        ("free above total: unknown", {"imageFilesystem": {"freeBytes": 30, "totalBytes": 20}}, (-1, -1, -1, -1)),
        ("not numbers: unknown", {"imageFilesystem": {"freeBytes": "10", "totalBytes": 20}}, (-1, -1, -1, -1)),
        ("a boolean is not a number", {"modelCache": {"freeBytes": True, "totalBytes": 20}}, (-1, -1, -1, -1)),
        ("malformed disk", "full", (-1, -1, -1, -1)),
        ("absent", None, (-1, -1, -1, -1)),
    ],
)
def test_report_disk_figures(case: str, disk: Any, expected: tuple[int, int, int, int]) -> None:
    report = report_object("n1")
    if disk is not None:
        report["spec"]["disk"] = disk
    state = with_report(node_from_object(node_object("n1")), report, now=0.0)
    got = (state.image_fs_free, state.image_fs_total, state.model_cache_free, state.model_cache_total)
    assert got == expected, case


def test_scenario_disk_figures() -> None:
    scenario = {
        "nodeTypes": {
            "small": {
                "gpus": 1,
                "disk": {"imageFilesystem": {"total": "40Gi"}, "modelCache": {"total": "100Gi", "free": "10Gi"}},
            }
        },
        "nodes": [{"name": "s", "type": "small", "images": {IMAGE: "15Gi"}}, {"name": "plain", "gpus": 1}],
    }
    small, plain = load_nodes(scenario)
    # free defaults to total less the images listed: 40 - 15 = 25 GiB
    assert (small.image_fs_free, small.image_fs_total) == (25 * GiB, 40 * GiB)
    assert (small.model_cache_free, small.model_cache_total) == (10 * GiB, 100 * GiB)
    assert (plain.image_fs_free, plain.model_cache_total) == (-1, -1)


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        ({"imageFs": {"total": "1Gi"}}, "disk takes imageFilesystem and modelCache"),
        ({"modelCache": {"free": "1Gi"}}, "takes total"),
        ({"modelCache": {"total": "1Gi", "free": "2Gi"}}, "free must be between 0 and total"),
        ({"modelCache": {"total": "lots"}}, "disk.modelCache"),
    ],
)
def test_scenario_disk_errors(disk: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_nodes({"nodes": [{"name": "n", "gpus": 1, "disk": disk}]})
