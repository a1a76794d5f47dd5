"""The install path of manifests/README.md on the real control plane: the manifests apply cleanly,
the components run with the manifests' arguments, configuration and RBAC, pods that opt in with
`schedulerName: gpusched` are placed by gpusched and others are left alone, and an extender
restart delays GPU pods without misplacing any."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest
import yaml

from localcluster import k8s
from scheduler.core.scenario import pod_object
from tests import install
from tests.e2e.install_env import EXTENDER_LEASE, LEASE, MANIFESTS, REPORTS, Installed, installed, wait_http

pytestmark = pytest.mark.e2e

__all__ = ["installed"]


def requests_served(env: Installed, verb: str) -> float:
    text = httpx.get(f"{env.extender_url}/metrics", timeout=5).text
    pattern = rf'^gpusched_extender_requests_total\{{(?=[^}}]*verb="{verb}")[^}}]*\}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, flags=re.M))


def pin(env: Installed, name: str, node: str, gpus: int, scheduler: str = "gpusched") -> dict[str, Any]:
    """A pod limited to one node (nodeSelector), so that tests control which pods share a node."""
    obj = pod_object({"name": name, "gpus": gpus, "schedulerName": scheduler})
    obj["spec"].pop("nodeName", None)
    obj["metadata"].pop("uid", None)
    obj["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    created: dict[str, Any] = k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)
    return created


def bound_pods(env: Installed) -> list[dict[str, Any]]:
    pods = k8s.request(env.api, "GET", "/api/v1/namespaces/default/pods")["items"]
    return [p for p in pods if p["spec"].get("nodeName")]


def gpu_ids(pod: dict[str, Any]) -> list[int]:
    raw = (pod["metadata"].get("annotations") or {}).get("gpusched.io/gpu-ids", "")
    return [int(i) for i in raw.split(",") if i]


def test_manifests_apply_with_no_error_and_no_warning(installed: Installed) -> None:
    assert installed.warnings == []
    # The README's two commands, again: the CRD folder, then the kustomization. Nothing changes.
    applier = install.Applier(installed.api)
    crds = [d for p in sorted((MANIFESTS / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    applier.apply(crds)
    before = {install.key(o): o["metadata"]["resourceVersion"] for o in applier.apply(installed.objects)}
    after = {install.key(o): o["metadata"]["resourceVersion"] for o in applier.apply(installed.objects)}
    assert applier.warnings == []
    assert before == after


def test_a_pod_that_opts_in_is_placed_by_gpusched(installed: Installed) -> None:
    installed.pod("opted-in", 1)
    node = k8s.wait_for_pod_node(installed.api, "default", "opted-in", timeout=60)
    pod = installed.get_pod("opted-in")
    assert node in ("gpu-a", "gpu-b")
    assert len(gpu_ids(pod)) == 1
    scheduled = [e for e in installed.events_for("opted-in") if e.get("reason") == "Scheduled"]
    assert scheduled and all(
        "gpusched" in (e.get("reportingComponent"), (e.get("source") or {}).get("component")) for e in scheduled
    ), scheduled


def test_a_pod_for_the_default_scheduler_is_not_handled_by_gpusched(installed: Installed) -> None:
    filters = requests_served(installed, "filter")
    installed.pod("not-opted-in", 1, scheduler="default-scheduler")
    installed.pod("opted-in-2", 1)
    k8s.wait_for_pod_node(installed.api, "default", "opted-in-2", timeout=60)
    time.sleep(3)
    pod = installed.get_pod("not-opted-in")
    assert not pod["spec"].get("nodeName")
    assert installed.events_for("not-opted-in") == []
    # The one filter call since is the opted-in pod's.
    assert requests_served(installed, "filter") - filters == 1


def test_components_run_with_the_manifests_rbac(installed: Installed) -> None:
    for name, process in installed.processes.items():
        assert process.alive(), f"{name} exited:\n{process.tail()}"
        assert installed.refused(process.log) == [], name
    scheduler_log = installed.cluster.workdir / "kube-scheduler.log"
    assert installed.refused(scheduler_log, installed.scheduler_log_start) == []
    # Leader election on the manifests' Lease, as the gpusched-scheduler ServiceAccount.
    lease = k8s.request(installed.api, "GET", LEASE)
    assert lease["spec"].get("holderIdentity")
    # The extender's own election, as the gpusched-extender ServiceAccount: its pod name holds it,
    # with the address standbys forward to (its pod IP and port).
    lease = k8s.request(installed.api, "GET", EXTENDER_LEASE)
    assert lease["spec"]["holderIdentity"] == "gpusched-extender-0"
    assert lease["metadata"]["annotations"]["gpusched.io/leader-url"] == installed.extender_url
    # The agents' reports were written with their node-bound tokens, through the admission policy.
    for node in ("gpu-a", "gpu-b"):
        report = k8s.request(installed.api, "GET", f"{REPORTS}/{node}")
        assert report["spec"]["nodeName"] == node
        assert report["spec"]["gpuCount"] == 8


def test_while_the_extender_restarts_gpu_pods_wait_and_nothing_is_misplaced(installed: Installed) -> None:
    """The availability story of manifests/README.md: with the extender away, kube-scheduler's filter
    call fails, the pod stays Pending and is retried with backoff; the restarted extender rebuilds its
    view from the API (GPUs already handed out included) and places it on GPUs nobody holds."""
    pin(installed, "before-restart", "gpu-b", 2)
    k8s.wait_for_pod_node(installed.api, "default", "before-restart", timeout=60)
    held_before = [i for pod in bound_pods(installed) if pod["spec"]["nodeName"] == "gpu-b" for i in gpu_ids(pod)]
    assert 2 <= len(held_before) < 8
    installed.processes["extender"].stop()
    pin(installed, "during-restart", "gpu-b", 8 - len(held_before))  # exactly the GPUs gpu-b has left
    failed = k8s.wait_until(
        lambda: [e for e in installed.events_for("during-restart") if e.get("reason") == "FailedScheduling"] or None,
        timeout=60,
        what="FailedScheduling while the extender is away",
    )
    assert not installed.get_pod("during-restart")["spec"].get("nodeName")
    messages = [str(e.get("message")) for e in failed]
    assert any("connect" in m or "extender" in m for m in messages), messages
    restarted = installed.restart("extender")
    wait_http(restarted, f"{installed.extender_url}/readyz")
    assert k8s.wait_for_pod_node(installed.api, "default", "during-restart", timeout=90) == "gpu-b"
    held: dict[str, list[int]] = defaultdict(list)
    for pod in bound_pods(installed):
        held[pod["spec"]["nodeName"]] += gpu_ids(pod)
    assert sorted(held["gpu-b"]) == list(range(8)), held
    for node, ids in held.items():
        assert len(ids) == len(set(ids)), f"{node}: a GPU handed out twice: {sorted(ids)}"
