"""The real kube-scheduler calls the gpusched extender and binds pods where gpusched wants them."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from tests.builders import GiB
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e


def hetero(env: Env) -> None:
    env.node("h100-0", 8, model="H100-80GB", memory_gib=80, interconnect="nvswitch", cuda="12.4")
    env.node("a100-0", 8, model="A100-40GB", memory_gib=40, interconnect="nvlink-pairs", cuda="12.2")
    env.node("l4-0", 4, model="L4", memory_gib=24, interconnect="pcie", cuda="12.2")


def test_memory_floor_lands_on_h100(gpusched: Env) -> None:
    hetero(gpusched)
    gpusched.pod("big", 1, annotations={"gpusched.io/gpu-memory": "60Gi"})
    assert gpusched.wait_bound("big") == "h100-0"
    annotations = gpusched.get_pod("big")["metadata"]["annotations"]
    assert annotations["gpusched.io/gpu-ids"] in {str(i) for i in range(8)}


def test_four_gpus_go_where_they_are_nvlinked(gpusched: Env) -> None:
    gpusched.node("scattered", 8, model="A100-40GB", memory_gib=40, interconnect="nvlink-pairs")
    gpusched.node("paired", 8, model="A100-40GB", memory_gib=40, interconnect="nvlink-pairs")
    # Already running: one GPU of every NVLink pair on "scattered", the first two pairs of "paired".
    for i in range(4):
        gpusched.pod(f"s{i}", 1, node="scattered", gpuIds=[2 * i])
    gpusched.pod("p0", 4, node="paired", gpuIds=[0, 1, 2, 3])
    gpusched.pod("four", 4)
    assert gpusched.wait_bound("four") == "paired"
    assert gpusched.get_pod("four")["metadata"]["annotations"]["gpusched.io/gpu-ids"] == "4,5,6,7"


def test_inference_pod_goes_where_image_and_weights_are_cached(gpusched: Env) -> None:
    image = "ghcr.io/acme/llm-server:1.4"
    gpusched.node("cold-0", 8)
    gpusched.node(
        "warm-0",
        8,
        images=[{"names": [image], "sizeBytes": 15 * GiB}],
        models={"meta-llama/Llama-3.1-8B@main": 16 * GiB},
    )
    gpusched.node("cold-1", 8)
    gpusched.pod("infer", 1, image=image, annotations={"gpusched.io/model": "meta-llama/Llama-3.1-8B@main"})
    assert gpusched.wait_bound("infer") == "warm-0"


def test_unmet_cuda_requirement_stays_pending_with_gpuscheds_reason(gpusched: Env) -> None:
    hetero(gpusched)
    gpusched.pod("new-cuda", 1, annotations={"gpusched.io/cuda": "12.8"})
    events = gpusched.wait_for(
        lambda: [e for e in gpusched.events_for("new-cuda") if e.startswith("FailedScheduling")], "FailedScheduling"
    )
    assert any("needs CUDA driver >= 12.8, node has 12.4" in e for e in events), events
    assert not gpusched.get_pod("new-cuda")["spec"].get("nodeName")


def assert_not_over_committed(env: Env, allocatable: dict[str, int]) -> int:
    held: dict[str, list[int]] = defaultdict(list)
    bound = 0
    for pod in env.pods():
        node = pod["spec"].get("nodeName")
        if not node:
            continue
        bound += 1
        ids = pod["metadata"].get("annotations", {}).get("gpusched.io/gpu-ids", "")
        held[node] += [int(i) for i in ids.split(",") if i]
        requested = int(pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert requested == 1
    for node, gpus in held.items():
        assert len(gpus) == len(set(gpus)), f"{node}: a GPU given twice: {sorted(gpus)}"
        assert len(gpus) <= allocatable[node], f"{node}: {len(gpus)} GPUs bound, {allocatable[node]} exist"
        assert all(0 <= g < allocatable[node] for g in gpus)
    return bound


def test_burst_of_50_never_over_commits(gpusched: Env) -> None:
    hetero(gpusched)
    gpusched.node("h100-1", 8)
    capacity = {"h100-0": 8, "a100-0": 8, "l4-0": 4, "h100-1": 8}
    for i in range(50):
        gpusched.pod(f"burst-{i}", 1)
    gpusched.wait_for(lambda: assert_not_over_committed(gpusched, capacity) == 28, "28 pods bound", timeout=120)
    assert assert_not_over_committed(gpusched, capacity) == 28
    pending = [p for p in gpusched.pods() if not p["spec"].get("nodeName")]
    assert len(pending) == 22


def test_extender_restart_resyncs_and_keeps_scheduling_correctly(gpusched: Env) -> None:
    gpusched.node("n0", 4)
    gpusched.node("n1", 4)
    capacity = {"n0": 4, "n1": 4}
    for i in range(4):
        gpusched.pod(f"before-{i}", 1)
    gpusched.wait_for(lambda: assert_not_over_committed(gpusched, capacity) == 4, "first 4 bound")
    gpusched.extender.stop()
    for i in range(6):
        gpusched.pod(f"during-{i}", 1)
    gpusched.extender.start()
    gpusched.wait_for(lambda: assert_not_over_committed(gpusched, capacity) == 8, "all 8 GPUs bound", timeout=90)
    assert assert_not_over_committed(gpusched, capacity) == 8
    # The restarted extender rebuilt its view from the API: it knows all eight GPUs are taken.
    pending = next(p["metadata"]["name"] for p in gpusched.pods() if not p["spec"].get("nodeName"))
    explain = orjson.loads(gpusched.extender.get(f"/explain/default/{pending}"))
    assert explain["best"] is None
    assert {n: v["reason"] for n, v in explain["nodes"].items()} == {
        "n0": "needs 1 GPU, 0 of 4 allocatable left",
        "n1": "needs 1 GPU, 0 of 4 allocatable left",
    }
    metrics = gpusched.extender.get("/metrics").decode()
    assert 'gpusched_informer_synced{resource="pods"} 1.0' in metrics
