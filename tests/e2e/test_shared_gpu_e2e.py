"""GPU shares go through gpusched. kube-scheduler runs the shipped configuration
(manifests/scheduler/kube-scheduler.yaml); a share pod asks for one replica of the device plugin's
shared resource (`nvidia.com/gpu.shared`, manifests/device-plugin/) and for its share in
`gpusched.io/gpu-milli`, and no `nvidia.com/gpu` at all. It still reaches the extender, which
puts it on a GPU with room and never puts two shares that together exceed a GPU on the same one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import yaml

from localcluster import k8s
from scheduler.core.podspec import ANN_GPU_IDS, ANN_GPU_MILLI
from scheduler.core.scenario import pod_object
from tests.e2e.gpusched_env import FAST_BACKOFF, REPO, Env

pytestmark = pytest.mark.e2e

WAIT_S = 120.0  # generous: the machine running the tests may be loaded
SHARED = "nvidia.com/gpu.shared"
REPLICAS = 10  # per GPU, as manifests/device-plugin/nvidia-device-plugin-config.yaml shares them


@pytest.fixture
def shipped(gpusched: Env) -> Iterator[Env]:
    """kube-scheduler restarted with the shipped configuration; only the kubeconfig, the
    extender's URL and leader election (one scheduler here) differ."""
    config = yaml.safe_load((REPO / "manifests" / "scheduler" / "kube-scheduler.yaml").read_text())
    config["clientConnection"]["kubeconfig"] = str(gpusched.cluster.scheduler_kubeconfig_path)
    config["leaderElection"] = {"leaderElect": False}
    config["extenders"][0]["urlPrefix"] = gpusched.extender.url
    gpusched.cluster.stop_scheduler()
    gpusched.cluster.start_scheduler(scheduler_config={**config, **FAST_BACKOFF})
    yield gpusched


def share_pod(env: Env, name: str, milli: int, node: str = "", gpu_ids: list[int] | None = None) -> None:
    entry: dict[str, Any] = {
        "name": name,
        "gpus": 1,  # one replica of the shared resource
        "schedulerName": "gpusched",
        "annotations": {ANN_GPU_MILLI: str(milli)},
        "node": node,
        "gpuIds": gpu_ids,
    }
    obj = pod_object(entry, gpu_resource=SHARED)
    if not node:
        obj["spec"].pop("nodeName", None)
    k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)


def seen_bound(env: Env, pod: str) -> bool | None:
    try:
        return bool(orjson.loads(env.extender.get(f"/explain/default/{pod}")).get("boundTo")) or None
    except OSError:  # 404 until the informer has the pod
        return None


def annotated_gpus(env: Env, pod: str) -> list[int]:
    annotations = env.get_pod(pod)["metadata"].get("annotations") or {}
    assert ANN_GPU_IDS in annotations, f"{pod} was bound without gpusched: {annotations}"
    return [int(g) for g in annotations[ANN_GPU_IDS].split(",")]


def test_shares_reach_gpusched_and_land_on_gpus_with_room(shipped: Env) -> None:
    # A node whose device plugin shares its 3 GPUs: 3 x 10 replicas of nvidia.com/gpu.shared, no
    # nvidia.com/gpu; its report names the 3 GPUs.
    shipped.cluster.create_gpu_node("shared-a", 3 * REPLICAS, gpu_resource=SHARED)
    shipped.report("shared-a", 3)
    share_pod(shipped, "resident", 700, node="shared-a", gpu_ids=[0])  # GPU 0: 1000 - 700 = 300 left
    shipped.wait_for(lambda: seen_bound(shipped, "resident"), "the extender sees the resident share", WAIT_S)

    share_pod(shipped, "share-1", 600)
    share_pod(shipped, "share-2", 600)
    for name in ("share-1", "share-2"):
        assert shipped.wait_bound(name, timeout=WAIT_S) == "shared-a"
    # gpu-ids is written by gpusched's bind only: both went through the extender. 600 > 300 keeps
    # them off GPU 0, and 600 + 600 > 1000 keeps them apart.
    assert sorted(annotated_gpus(shipped, n) for n in ("share-1", "share-2")) == [[1], [2]]

    # 300, 400 and 400 left: a third 600 fits no GPU, although the node has replicas to spare.
    share_pod(shipped, "share-3", 600)
    shipped.wait_for(
        lambda: [e for e in shipped.events_for("share-3") if "largest free share is 400/1000" in e],
        "gpusched to turn share-3 away",
        WAIT_S,
    )
    assert not shipped.get_pod("share-3")["spec"].get("nodeName")
