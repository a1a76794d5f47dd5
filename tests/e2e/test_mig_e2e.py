"""MIG goes through gpusched. kube-scheduler runs the shipped configuration; a node's device plugin
advertises MIG instances per profile (`nvidia.com/mig-1g.12gb`, the "mixed" strategy of
manifests/device-plugin/) and its report lists the instances and the pods the kubelet gave them.
A MIG pod asks for its profile's resource and nothing else, and still reaches the extender, which
counts instances by the report; a whole-GPU pod never gets the MIG-enabled GPU."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from localcluster import k8s
from localcluster.k8s import MERGE_PATCH
from scheduler.core.podspec import ANN_GPU_MEMORY
from tests.builders import mig_gpu, mig_pod, pod, report_object, with_gpus
from tests.e2e.gpusched_env import Env
from tests.e2e.test_shared_gpu_e2e import shipped  # noqa: F401  (the fixture, shared)

pytestmark = pytest.mark.e2e

WAIT_S = 120.0  # generous: the machine running the tests may be loaded
MIG_1G = "nvidia.com/mig-1g.12gb"


def sliced_node(env: Env, name: str) -> None:
    """One H100 NVL split into a 3g.47gb and three 1g.12gb instances. The device plugin advertises
    the three 1g.12gb instances, and (as a plugin left at migStrategy none does) the GPU itself as
    one nvidia.com/gpu. The kubelet still runs `gone/leftover` on the first 1g.12gb instance: a pod
    the API no longer lists, so kube-scheduler counts 3 free and gpusched 2."""
    env.cluster.create_gpu_node(name, 1)
    allocatable = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "1", MIG_1G: "3"}
    status = {"status": {"capacity": allocatable, "allocatable": allocatable}}
    k8s.request(env.api, "PATCH", f"/api/v1/nodes/{name}/status", status, content_type=MERGE_PATCH)
    instances = [("3g.47gb", []), ("1g.12gb", ["gone/leftover"]), ("1g.12gb", []), ("1g.12gb", [])]
    env.apply_report(with_gpus(report_object(name), [mig_gpu(0, instances)]))


def create(env: Env, obj: dict[str, Any]) -> None:
    obj["spec"]["schedulerName"] = "gpusched"
    obj["spec"].pop("nodeName", None)
    k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)


def counted_on(env: Env, pod: str) -> list[str] | None:
    """The MIG instances gpusched counts the bound pod on, per /explain (None until it does)."""
    try:
        explained = orjson.loads(env.extender.get(f"/explain/default/{pod}"))
    except OSError:  # 404 until the informer has the pod
        return None
    return explained.get("migInstances") if explained.get("boundTo") else None


def refused_with(env: Env, pod: str, words: str) -> None:
    env.wait_for(lambda: [e for e in env.events_for(pod) if words in e], f"gpusched to turn {pod} away", WAIT_S)
    assert not env.get_pod(pod)["spec"].get("nodeName")


def test_mig_pods_reach_gpusched_and_take_instances_one_each(shipped: Env) -> None:  # noqa: F811
    sliced_node(shipped, "sliced")

    # The finding: the GPU has 93.03 GiB, the node one nvidia.com/gpu, and kube-scheduler's own
    # filters pass the pod; only a 12 GB slice is free, so gpusched turns it away.
    create(shipped, pod("big", gpus=1, annotations={ANN_GPU_MEMORY: "80Gi"}))
    refused_with(shipped, "big", "0 free and healthy; 1 MIG-enabled")

    for name in ("m1", "m2"):
        create(shipped, mig_pod(name))
    for name in ("m1", "m2"):
        assert shipped.wait_bound(name, timeout=WAIT_S) == "sliced"
    # Each on an instance of its own, and not on the leftover's (MIG-0-1).
    counted = [
        shipped.wait_for(lambda n=n: counted_on(shipped, n), f"gpusched to count {n}", WAIT_S) for n in ("m1", "m2")
    ]
    assert sorted(counted) == [["MIG-0-2"], ["MIG-0-3"]]
    # kube-scheduler sees 3 - 2 = 1 instance left; gpusched sees 3 - 1 leftover - 2 bound = 0.
    create(shipped, mig_pod("m3"))
    refused_with(shipped, "m3", "needs 1 x MIG 1g.12gb, 0 free")
