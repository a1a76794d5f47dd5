"""Agents in fake-NVML mode against the real control plane (etcd + kube-apiserver from localcluster).

Each agent runs as the real command, authenticated with a service-account token bound to its
Node object (TokenRequest, boundObjectRef kind Node), under the RBAC and the
ValidatingAdmissionPolicy of manifests/agent/. The tests check that reports arrive through
server-side apply and parse in the extender, that a node's token cannot write another node's
report (HTTP 403 from the admission policy), and that a stopped agent's report goes stale.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from gpu_agent import fake_nvml
from gpu_agent.fake_kubelet import FakeKubelet
from gpu_agent.publisher import ApplyError, KubernetesSink
from localcluster import k8s
from localcluster.cluster import LocalCluster
from scheduler.core.objects import node_from_object, with_report

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AGENT_MANIFESTS = REPO / "manifests" / "agent"
CRDS = REPO / "manifests" / "crds"
NAMESPACE = "gpusched-system"
SERVICE_ACCOUNT = "gpusched-agent"
REPORTS = "/apis/gpusched.io/v1alpha1/gpunodereports"
HEARTBEAT = 1.0
ADMISSION_PLURALS = {
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}

# node name -> (fake NVML machine, GPUs)
NODES = {
    "e2e-agent-dgx": ("dgx-h100", 8),
    "e2e-agent-a100": ("hgx-a100-40gb", 8),
    "e2e-agent-mig": ("h100-mig", 2),
    "e2e-agent-l4": ("l4x4", 4),
}


@dataclass
class AgentCluster:
    cluster: LocalCluster
    workdir: Path
    kubeconfigs: dict[str, Path]
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def api(self) -> Any:
        return self.cluster.api_client()

    def report(self, node: str) -> dict[str, Any] | None:
        with self.api() as api:
            try:
                result: dict[str, Any] = k8s.request(api, "GET", f"{REPORTS}/{node}")
                return result
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise


def agent_manifests() -> list[dict[str, Any]]:
    """manifests/agent/ in kustomization order, without the Kustomization file itself."""
    kustomization = yaml.safe_load((AGENT_MANIFESTS / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((AGENT_MANIFESTS / name).read_text()) if d)
    return docs


def node_token(api: Any, node: str | None, uid: str | None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if node is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}
    answer = k8s.request(
        api,
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(answer["status"]["token"])


def write_kubeconfig(path: Path, cluster: LocalCluster, token: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": cluster.api_url, "certificate-authority": str(cluster.ca_path)},
                    }
                ],
                "users": [{"name": "agent", "user": {"token": token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "agent"}}],
                "current-context": "local",
            }
        )
    )
    path.chmod(0o600)
    return path


def start_agent(env: AgentCluster, node: str, *extra: str) -> subprocess.Popen[str]:
    machine, _ = NODES[node]
    log = (env.workdir / f"{node}.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpu_agent.cli",
            "--fake-nvml",
            machine,
            "--node-name",
            node,
            "--kubeconfig",
            str(env.kubeconfigs[node]),
            "--heartbeat",
            str(HEARTBEAT),
            "--interval",
            "0.5",
            "--min-write-interval",
            "0.2",
            "--disk-probe-bytes",
            "0",
            "--log-level",
            "DEBUG",
            *extra,
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    env.processes[node] = process
    return process


def stop_agent(env: AgentCluster, node: str) -> None:
    process = env.processes.pop(node, None)
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def hf_cache_with_one_model(root: Path) -> Path:
    """A Hugging Face-layout cache holding one revision of one model."""
    repo = root / "models--meta-llama--Llama-3.1-8B"
    revision = "0e9e39f249a16976918f6564b8830bc894c89659"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, size in (("config.json", 700), ("model.safetensors", 1 << 20)):
        blob = repo / "blobs" / f"{name}-blob"
        blob.write_bytes(b"w" * size)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return root


@pytest.fixture(scope="module")
def agents(control_plane: LocalCluster) -> Iterator[AgentCluster]:
    control_plane.apply_crds(CRDS)
    manifests = agent_manifests()
    daemonset = [d for d in manifests if d["kind"] == "DaemonSet"]
    control_plane.apply_manifest([d for d in manifests if d["kind"] != "DaemonSet"])
    with tempfile.TemporaryDirectory(prefix="gpusched-e2e-agent-") as tmp:
        workdir = Path(tmp)
        kubeconfigs = {}
        with control_plane.api_client() as api:
            # The DaemonSet is checked by the API server (schema, field validation) without running.
            for obj in daemonset:
                k8s.request(
                    api,
                    "PATCH",
                    f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{obj['metadata']['name']}",
                    obj,
                    query={"fieldManager": "e2e", "dryRun": "All", "fieldValidation": "Strict"},
                    content_type=k8s.APPLY_PATCH,
                )
            for node, (_machine, gpus) in NODES.items():
                created = control_plane.create_gpu_node(node, gpus, {"nvidia.com/gpu.present": "true"})
                token = node_token(api, node, created["metadata"]["uid"])
                kubeconfigs[node] = write_kubeconfig(workdir / f"{node}.kubeconfig", control_plane, token)
            kubeconfigs["unbound"] = write_kubeconfig(
                workdir / "unbound.kubeconfig", control_plane, node_token(api, None, None)
            )
        env = AgentCluster(control_plane, workdir, kubeconfigs)
        try:
            yield env
        finally:
            for node in list(env.processes):
                stop_agent(env, node)
            with control_plane.api_client() as api:
                for node in NODES:
                    for path in (f"{REPORTS}/{node}", f"/api/v1/nodes/{node}"):
                        try:
                            k8s.request(api, "DELETE", path)
                        except ApiException as exc:
                            if exc.status != 404:
                                raise
                for obj in manifests:
                    plural = ADMISSION_PLURALS.get(obj["kind"])
                    if plural:
                        name = obj["metadata"]["name"]
                        k8s.request(api, "DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")
            for node in NODES:
                log = workdir / f"{node}.log"
                if log.exists():
                    print(f"--- agent log {node} (tail)\n" + "\n".join(log.read_text().splitlines()[-15:]))


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_agents_publish_reports_that_the_extender_reads(agents: AgentCluster) -> None:
    hf = hf_cache_with_one_model(agents.workdir / "hf")
    with tempfile.TemporaryDirectory(prefix="gpusched-") as d, FakeKubelet(Path(d) / "kubelet.sock") as kubelet:
        sockets = Path(d)
        dgx_uuids = [g["uuid"] for g in json.loads(fake_nvml.machine_path("dgx-h100").read_text())["gpus"]]
        kubelet.assign("ml/train-0", "nvidia.com/gpu", dgx_uuids[:4])
        start_agent(
            agents, "e2e-agent-dgx", "--podresources-socket", str(sockets / "kubelet.sock"), "--hf-cache", str(hf)
        )
        for node in ("e2e-agent-a100", "e2e-agent-mig", "e2e-agent-l4"):
            start_agent(agents, node, "--podresources-socket", str(sockets / "none.sock"))
        reports = {node: wait_for(lambda n=node: agents.report(n), 60, f"the report of {node}") for node in NODES}
        dgx = wait_for(
            lambda: (r := agents.report("e2e-agent-dgx")) and r["spec"]["gpus"][0].get("pods") and r,
            30,
            "the pods of the DGX node",
        )
    now = time.time()
    for node, report in reports.items():
        _machine, gpus = NODES[node]
        spec = report["spec"]
        assert spec["nodeName"] == node and spec["gpuCount"] == gpus
        assert report["metadata"]["managedFields"][0]["manager"] == "gpusched-agent"
        with agents.api() as api:
            node_obj = k8s.request(api, "GET", f"/api/v1/nodes/{node}")
        state = with_report(node_from_object(node_obj), report, now)
        assert len(state.gpus) == gpus and all(g.healthy for g in state.gpus)
        assert state.report_age_s is not None and state.report_age_s < 30
        assert len(state.links) == gpus and state.cuda[0] == 12
    dgx_spec = dgx["spec"]
    assert [g["pods"] for g in dgx_spec["gpus"]] == [["ml/train-0"]] * 4 + [[]] * 4
    assert dgx_spec["topology"]["nvlinkCounts"][0][7] == 18
    assert "meta-llama/Llama-3.1-8B@main" in {m["id"] for m in dgx_spec["models"]}
    # Fields this agent adds to the CRD's schema survive the API server's pruning.
    mig_gpu = reports["e2e-agent-mig"]["spec"]["gpus"][0]
    assert mig_gpu["nvlinkActiveLinks"] == 12
    assert [m["gpuInstanceId"] for m in mig_gpu["migInstances"]] == [2, 3, 9, 10]
    assert reports["e2e-agent-l4"]["spec"]["topology"]["matrix"][0] == ["", "PIX", "SYS", "SYS"]


def apply_as(env: AgentCluster, identity: str, report_for: str, node_name: str | None = None) -> None:
    sink = KubernetesSink(str(env.kubeconfigs[identity]))
    report = {
        "apiVersion": "gpusched.io/v1alpha1",
        "kind": "GPUNodeReport",
        "metadata": {"name": report_for},
        "spec": {
            "nodeName": node_name or report_for,
            "reportTime": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "gpuCount": 0,
        },
    }
    try:
        sink.apply(report)
    finally:
        sink.close()


def test_a_node_token_can_write_only_its_own_nodes_report(agents: AgentCluster) -> None:
    apply_as(agents, "e2e-agent-a100", "e2e-agent-a100")  # its own: allowed
    with pytest.raises(ApplyError) as other:
        apply_as(agents, "e2e-agent-a100", "e2e-agent-dgx")
    assert other.value.status == 403
    assert "gpusched agent of node e2e-agent-a100 may not write the GPUNodeReport of e2e-agent-dgx" in str(other.value)
    with pytest.raises(ApplyError) as mislabelled:
        apply_as(agents, "e2e-agent-a100", "e2e-agent-a100", node_name="e2e-agent-dgx")
    assert mislabelled.value.status == 403 and "may not report for node e2e-agent-dgx" in str(mislabelled.value)
    with pytest.raises(ApplyError) as unbound:
        apply_as(agents, "unbound", "e2e-agent-l4")
    assert unbound.value.status == 403 and "not bound to a node" in str(unbound.value)
    # RBAC: an agent may neither delete reports, not even its own, nor list them.
    with k8s.api_client(agents.kubeconfigs["e2e-agent-a100"]) as api:
        for method, path in (("DELETE", f"{REPORTS}/e2e-agent-a100"), ("GET", REPORTS)):
            with pytest.raises(ApiException) as refused:
                k8s.request(api, method, path)
            assert refused.value.status == 403


def test_the_agent_command_with_another_nodes_token_is_refused(agents: AgentCluster) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_agent.cli",
            "--once",
            "--fake-nvml",
            "l4x4",
            "--node-name",
            "e2e-agent-mig",
            "--kubeconfig",
            str(agents.kubeconfigs["e2e-agent-l4"]),
            "--disk-probe-bytes",
            "0",
            "--podresources-socket",
            "/nonexistent",
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr and "may not write the GPUNodeReport of e2e-agent-mig" in result.stderr
    report = agents.report("e2e-agent-mig")
    assert report is None or report["spec"]["gpus"][0]["model"] == "NVIDIA H100 NVL"  # untouched


def test_a_stopped_agents_lease_lapses_and_objects_are_owned_by_the_node(agents: AgentCluster) -> None:
    """Heartbeats are Leases (``gpusched-system/<node>``): live agents renew theirs, a stopped
    agent's stops; reports are not rewritten while nothing changes; both name their Node as owner."""
    for node in NODES:
        if node not in agents.processes:
            start_agent(agents, node, "--podresources-socket", "/nonexistent")
    for node in NODES:
        wait_for(lambda n=node: agents.report(n), 60, f"the report of {node}")

    def lease(node: str) -> dict[str, Any] | None:
        with agents.api() as api:
            try:
                return k8s.request(api, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{node}")
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def renewed(node: str) -> float:
        got = lease(node)
        if got is None:
            return 0.0
        return _dt.datetime.fromisoformat(got["spec"]["renewTime"].replace("Z", "+00:00")).timestamp()

    for node in NODES:
        wait_for(lambda n=node: renewed(n) > 0, 60, f"the Lease of {node}")
    stop_agent(agents, "e2e-agent-l4")
    stopped_at = renewed("e2e-agent-l4")
    live_before = renewed("e2e-agent-a100")
    report_before = agents.report("e2e-agent-mig")  # no test writes over this one
    wait_for(lambda: renewed("e2e-agent-a100") >= live_before + 4 * HEARTBEAT, 60, "live Leases to advance")
    assert renewed("e2e-agent-l4") == stopped_at
    for node in ("e2e-agent-dgx", "e2e-agent-mig"):
        assert renewed(node) > stopped_at
    # The MIG node's GPUs and pods did not change: its report was not rewritten for the heartbeat.
    report_after = agents.report("e2e-agent-mig")
    assert report_before is not None and report_after is not None
    assert report_after["spec"]["reportTime"] == report_before["spec"]["reportTime"]
    got = lease("e2e-agent-mig")
    assert got is not None
    assert got["spec"]["holderIdentity"] == "gpusched-agent/e2e-agent-mig"
    assert got["spec"]["leaseDurationSeconds"] == 90
    with agents.api() as api:
        node_obj = k8s.request(api, "GET", "/api/v1/nodes/e2e-agent-mig")
    owner = {"apiVersion": "v1", "kind": "Node", "name": "e2e-agent-mig", "uid": node_obj["metadata"]["uid"]}
    assert got["metadata"]["ownerReferences"] == [owner]
    assert report_after["metadata"]["ownerReferences"] == [owner]
    assert all(agents.processes[n].poll() is None for n in agents.processes)  # the others keep running
