"""Disk fit through the real kube-scheduler: a pod whose weights do not fit a node's model cache is
kept off that node, with the sizes in the reason; a node whose report has no disk figures is not
checked, and /explain says so."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from scheduler.plugins.disk_fit import UNCHECKED
from tests.builders import GiB, report_object
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-3.1-8B@main"
WEIGHTS = {"gpusched.io/model": MODEL, "gpusched.io/model-bytes": "40Gi", "gpusched.io/workload": "inference"}


def node_with_disks(env: Env, name: str, disk: dict[str, Any] | None) -> None:
    """An 8-GPU node whose GPUNodeReport carries `disk` as the agent writes it (None: no figures)."""
    env.node(name, 8, report=None)
    body = report_object(name, gpus=8)
    if disk is not None:
        body["spec"]["disk"] = disk
    env.apply_report(body)


def disks(image_free_gib: int, cache_free_gib: int) -> dict[str, Any]:
    return {
        "imageFilesystem": {"freeBytes": image_free_gib * GiB, "totalBytes": 200 * GiB},
        "modelCache": {"freeBytes": cache_free_gib * GiB, "totalBytes": 100 * GiB},
    }


def explain(env: Env, pod: str) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(env.extender.get(f"/explain/default/{pod}"))
    return out


def seen_bound(env: Env, pod: str) -> bool | None:
    """True once the extender's informer shows `pod` bound (its /explain names the node)."""
    try:
        return bool(explain(env, pod).get("boundTo")) or None
    except OSError:  # 404 until the informer has it
        return None


def test_weights_that_do_not_fit_the_model_cache_keep_the_pod_off(gpusched: Env) -> None:
    node_with_disks(gpusched, "a-small", disks(150, 20))  # 20 GiB free in the model cache
    node_with_disks(gpusched, "b-big", disks(150, 90))
    # a-small has two GPUs left: a 1-GPU pod without weights may go there (gpusched's filters pass
    # it; kube-scheduler's own scores then choose between the two), the one with weights may not.
    gpusched.pod("running", 6, node="a-small", gpuIds=[0, 1, 2, 3, 4, 5])
    gpusched.wait_for(lambda: seen_bound(gpusched, "running"), "the extender sees the running pod")
    gpusched.pod("probe", 1)
    gpusched.wait_bound("probe")
    assert explain(gpusched, "probe")["nodes"]["a-small"]["feasible"] is True
    gpusched.pod("llm", 1, annotations=WEIGHTS)
    assert gpusched.wait_bound("llm") == "b-big"
    # 40 GiB of weights + max(1 GiB, 10 % of 100 GiB) margin > 20 GiB free.
    reason = explain(gpusched, "llm")["nodes"]["a-small"]["reason"]
    assert reason == "model cache: needs 40.0 GiB + 10.0 GiB margin, 20.0 GiB free"


def test_node_without_disk_figures_is_not_checked_and_explain_says_so(gpusched: Env) -> None:
    node_with_disks(gpusched, "no-figures", None)
    gpusched.pod("llm", 1, annotations=WEIGHTS)
    assert gpusched.wait_bound("llm") == "no-figures"
    # The pod's image (pause) is of unknown size, so only its weights are to be fetched.
    assert explain(gpusched, "llm")["notes"]["disk_fit"] == {"no-figures": UNCHECKED.format("model cache")}
