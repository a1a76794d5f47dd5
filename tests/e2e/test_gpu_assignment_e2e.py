"""The kubelet decides which GPUs a pod gets: when a node's report (PodResources, as the agent
writes it) says a pod holds another GPU than its `gpusched.io/gpu-ids` annotation names, gpusched
follows the report, says so in /explain, counts it in /metrics, and gives the next pod the GPU the
kubelet left free."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from scheduler.core.podspec import ANN_GPU_IDS
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

WAIT_S = 120.0  # generous: the machine running the tests may be loaded
METRIC = "gpusched_gpu_assignment_disagreements_total"


def gpu_ids_seen(env: Env, pod: str) -> dict[str, Any] | None:
    """The extender's `gpuIds` for `pod` in /explain, None until its informer has the pod bound."""
    try:
        out = orjson.loads(env.extender.get(f"/explain/default/{pod}"))
    except OSError:  # 404 until the informer has the pod
        return None
    seen: dict[str, Any] | None = out.get("gpuIds")
    return seen


def metric(env: Env, name: str) -> float:
    for line in env.extender.get("/metrics").decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


def annotated_gpus(env: Env, pod: str) -> list[int]:
    return [int(g) for g in env.get_pod(pod)["metadata"]["annotations"][ANN_GPU_IDS].split(",")]


def test_a_report_that_contradicts_the_annotation_wins_and_is_counted(gpusched: Env) -> None:
    gpusched.node("gpu-a", 2)  # its report names no holders yet
    gpusched.pod("first", 1)
    gpusched.wait_bound("first", timeout=WAIT_S)
    (said,) = annotated_gpus(gpusched, "first")
    other = 1 - said
    agreed = {"annotation": [said], "kubelet": [], "counted": [said]}
    gpusched.wait_for(lambda: gpu_ids_seen(gpusched, "first") == agreed, "the extender sees first bound", WAIT_S)
    assert metric(gpusched, METRIC) == 0.0

    # The device plugin gave `first` the other GPU; the agent's report says so.
    gpusched.report("gpu-a", 2, holders={other: ["default/first"]})
    contradicted = {"annotation": [said], "kubelet": [other], "counted": [other]}
    gpusched.wait_for(
        lambda: gpu_ids_seen(gpusched, "first") == contradicted, "the extender to follow the report", WAIT_S
    )
    assert metric(gpusched, METRIC) == 1.0

    # The GPU the annotation named is the free one now: the next pod gets it.
    gpusched.pod("second", 1)
    gpusched.wait_bound("second", timeout=WAIT_S)
    assert annotated_gpus(gpusched, "second") == [said]
    assert metric(gpusched, METRIC) == 1.0  # second is in no report yet: nothing new to count
