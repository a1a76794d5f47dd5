"""Inference placement through the real kube-scheduler: replicas go where their weights are cached
(spread over zones), and a LoRA pod goes beside a replica already serving its base model."""

from __future__ import annotations

import pytest

from localcluster import k8s
from scheduler.core.scenario import pod_object
from tests.builders import GiB
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-3.1-8B@main"
SERVING = {"gpusched.io/model": MODEL, "gpusched.io/model-bytes": "16Gi", "gpusched.io/workload": "inference"}


def owned(env: Env, name: str, owner: str) -> None:
    """A replica owned by a ReplicaSet (the owner need not exist: no garbage collector runs here)."""
    obj = pod_object({"name": name, "gpus": 1, "annotations": SERVING})
    obj["spec"].pop("nodeName", None)
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": f"uid-{owner}", "controller": True}
    ]
    k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)


def test_replicas_land_where_weights_are_cached_and_spread_over_zones(gpusched: Env) -> None:
    weights = {MODEL: 16 * GiB}
    gpusched.node("zone-a-cold", 8, labels={"topology.kubernetes.io/zone": "a"})
    gpusched.node("zone-a-warm", 8, labels={"topology.kubernetes.io/zone": "a"}, models=weights)
    gpusched.node("zone-b-warm", 8, labels={"topology.kubernetes.io/zone": "b"}, models=weights)
    gpusched.node("zone-b-cold", 8, labels={"topology.kubernetes.io/zone": "b"})
    owned(gpusched, "web-0", "web-7d9c")
    first = gpusched.wait_bound("web-0")
    owned(gpusched, "web-1", "web-7d9c")
    second = gpusched.wait_bound("web-1")
    assert {first, second} == {"zone-a-warm", "zone-b-warm"}


def test_lora_pod_lands_beside_its_base_model(gpusched: Env) -> None:
    for name in ("n0", "n1", "n2"):
        gpusched.node(name, 8)
    # Same load on n0 and n1; only n1 serves the base model.
    other = {"gpusched.io/model": "mistralai/Mistral-7B@main", "gpusched.io/workload": "inference"}
    gpusched.pod("other-model", 1, node="n0", gpuIds=[0], annotations=other)
    gpusched.pod("base", 1, node="n1", gpuIds=[0], annotations=SERVING)
    gpusched.pod("adapter", 1, annotations={**SERVING, "gpusched.io/lora-adapters": "acme/support-bot"})
    assert gpusched.wait_bound("adapter") == "n1"
