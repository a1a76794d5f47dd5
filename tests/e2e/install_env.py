"""gpusched installed the way manifests/README.md says, on the real local control plane.

The manifests are rendered from the kustomization and server-side applied (strict field validation,
every API warning kept). No kubelet runs pods here, so each workload runs as a local process the way
its pod template describes: the same command and arguments, the ConfigMap files it mounts, and the
identity of its ServiceAccount (a token from the TokenRequest API, so its RBAC is the manifests'):

- the extender (Deployment gpusched-extender) with the gpusched-extender token;
- kube-scheduler (Deployment gpusched-scheduler) through localcluster, with the
  KubeSchedulerConfiguration of its ConfigMap, only the kubeconfig path (a gpusched-scheduler token)
  and the extender URL (the local process) rewritten;
- one agent (DaemonSet gpusched-agent) per GPU node, with fake NVML and a token bound to its Node.

Each process listens on its own loopback address at the port its pod template declares, as a pod
would on its own IP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localcluster import k8s
from localcluster.cluster import LocalCluster
from scheduler.core.scenario import pod_object
from tests import install
from tests.prometheus import MANIFESTS, StandIn, loopback_address

NAMESPACE = "gpusched-system"
REPORTS = "/apis/gpusched.io/v1alpha1/gpunodereports"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/gpusched-scheduler"
EXTENDER_LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/gpusched-extender"
GiB = 1 << 30
IMAGE = "ghcr.io/acme/llm-server:1.4"
MODEL_REPO = "acme/llm-8b"
MODEL = f"{MODEL_REPO}@main"
# node name -> fake NVML machine; each runs an agent.
NODES = {"gpu-a": "dgx-h100", "gpu-b": "hgx-a100-40gb"}


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Installed:
    cluster: LocalCluster
    api: ApiClient
    workdir: Path
    objects: list[dict[str, Any]]
    warnings: list[str]
    extender_url: str = ""
    extender_ip: str = ""
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    commands: dict[str, install.LocalCommand] = field(default_factory=dict)
    scheduler_log_start: int = 0
    stand_ins: list[StandIn] = field(default_factory=list)

    def pod(self, name: str, gpus: int = 1, scheduler: str = "gpusched", **entry: Any) -> dict[str, Any]:
        obj = pod_object({"name": name, "gpus": gpus, "schedulerName": scheduler, **entry})
        obj["spec"].pop("nodeName", None)
        obj["metadata"].pop("uid", None)
        created: dict[str, Any] = k8s.request(self.api, "POST", "/api/v1/namespaces/default/pods", obj)
        return created

    def get_pod(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = k8s.request(self.api, "GET", f"/api/v1/namespaces/default/pods/{name}")
        return pod

    def delete_pod(self, name: str) -> None:
        k8s.request(self.api, "DELETE", f"/api/v1/namespaces/default/pods/{name}", query={"gracePeriodSeconds": "0"})

    def events_for(self, name: str) -> list[dict[str, Any]]:
        query = {"fieldSelector": f"involvedObject.name={name}"}
        items: list[dict[str, Any]] = k8s.request(self.api, "GET", "/api/v1/namespaces/default/events", query=query)[
            "items"
        ]
        return items

    def refused(self, log: Path, since: int = 0) -> list[str]:
        """Lines of a log that say the API server refused something (RBAC or admission)."""
        lines = log.read_text(errors="replace").splitlines()[since:]
        return [line for line in lines if "forbidden" in line.lower() or " 403" in line]

    def restart(self, name: str) -> Process:
        """Stop a process and start it again with the same command, as a pod restart would."""
        self.processes[name].stop()
        return spawn(self, name, self.commands[name])


def service_account_token(api: ApiClient, account: str, node: Mapping[str, Any] | None = None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if node is not None:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Node",
            "name": node["metadata"]["name"],
            "uid": node["metadata"]["uid"],
        }
    answer = k8s.request(
        api,
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(answer["status"]["token"])


def kubeconfig(path: Path, cluster: LocalCluster, user: str, token: str) -> Path:
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
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                "current-context": "local",
            }
        )
    )
    path.chmod(0o600)
    return path


def hf_cache(root: Path, repo_id: str, size: int = 2 << 20) -> None:
    """A Hugging Face-layout cache with one revision (refs/main) of `repo_id`, `size` bytes of weights."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "4c5f0e0ad6a1b26e8a5a4bd0c9bb1f2f1e2d3c4b"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, nbytes in (("config.json", 600), ("model.safetensors", size)):
        blob = repo / "blobs" / f"{name}-blob"
        blob.write_bytes(os.urandom(nbytes))
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def spawn(env: Installed, name: str, cmd: install.LocalCommand) -> Process:
    log = env.workdir / f"{name}.log"
    proc = subprocess.Popen(
        cmd.argv,
        env={**os.environ, **cmd.env},
        cwd=cmd.cwd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env.processes[name] = Process(name, proc, log)
    env.commands[name] = cmd
    return env.processes[name]


def wait_http(process: Process, url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name}: {url} not ready in {timeout:.0f}s:\n{process.tail()}")
        time.sleep(0.3)


def install_gpusched(cluster: LocalCluster, workdir: Path) -> Installed:
    """Everything up to a running extender, agents and second scheduler; see the module docstring."""
    objects = install.build(MANIFESTS)
    api = cluster.api_client()
    applier = install.Applier(api)
    applier.apply(objects)
    env = Installed(cluster, api, workdir, objects, applier.warnings)
    try:
        start(env)
    except BaseException:
        for process in env.processes.values():
            print(f"--- {process.name} log (tail)\n{process.tail(15)}")
        uninstall(env)
        raise
    return env


def _established(api: ApiClient, objects: list[dict[str, Any]]) -> bool:
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{obj['metadata']['name']}"
            crd = k8s.request(api, "GET", path)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
    return True


def start(env: Installed) -> None:
    cluster, api, objects, workdir = env.cluster, env.api, env.objects, env.workdir
    k8s.wait_until(lambda: _established(api, objects), timeout=60, what="the CRD to be established")

    # GPU nodes, as kubelet and the device plugin would register them.
    nodes = {}
    for name in NODES:
        images = [{"names": [IMAGE], "sizeBytes": 15 * GiB}] if name == "gpu-a" else None
        nodes[name] = cluster.create_gpu_node(name, 8, {"nvidia.com/gpu.present": "true"}, images=images)

    # Agents, one per node, as the DaemonSet runs them.
    daemonset = install.find(objects, "DaemonSet", "gpusched-agent")
    for name, machine in NODES.items():
        ip = loopback_address()
        token = service_account_token(api, "gpusched-agent", nodes[name])
        config = kubeconfig(workdir / f"agent-{name}.kubeconfig", cluster, "gpusched-agent", token)
        cmd = install.local_command(
            objects,
            daemonset,
            workdir / f"agent-{name}",
            field_refs={"spec.nodeName": name, "metadata.namespace": daemonset["metadata"]["namespace"]},
            flags={"--metrics-address": ip},
            extra=[f"--kubeconfig={config}", f"--fake-nvml={machine}"],
        )
        if name == "gpu-a":
            hf_cache(cmd.mounts["/cache/huggingface/hub"], MODEL_REPO)
        port = next(a.split("=")[1] for a in cmd.argv if a.startswith("--metrics-port="))
        wait_http(spawn(env, f"agent-{name}", cmd), f"http://{ip}:{port}/metrics")
        env.stand_ins.append(StandIn(daemonset, f"gpusched-agent-{name}", ip, name))
    for name in NODES:
        k8s.wait_until(partial(_report, api, name), timeout=60, what=f"the GPUNodeReport of {name}")

    # The extender, as its Deployment runs it.
    deploy = install.find(objects, "Deployment", "gpusched-extender")
    env.extender_ip = loopback_address()
    token = service_account_token(api, "gpusched-extender")
    config = kubeconfig(workdir / "extender.kubeconfig", cluster, "gpusched-extender", token)
    cmd = install.local_command(
        objects,
        deploy,
        workdir / "extender",
        flags={"--host": env.extender_ip},
        extra=[f"--kubeconfig={config}"],
        field_refs={
            "metadata.name": "gpusched-extender-0",
            "metadata.namespace": deploy["metadata"]["namespace"],
            "status.podIP": env.extender_ip,
        },
    )
    port = next(a.split("=")[1] for a in cmd.argv if a.startswith("--port="))
    env.extender_url = f"http://{env.extender_ip}:{port}"
    wait_http(spawn(env, "extender", cmd), f"{env.extender_url}/readyz")
    env.stand_ins.append(StandIn(deploy, "gpusched-extender-0", env.extender_ip))

    # The second scheduler: its ConfigMap's configuration; only the kubeconfig and extender URL differ.
    scheduler = install.find(objects, "Deployment", "gpusched-scheduler")
    config_flag = next(a for a in install.container(scheduler)["command"] if a.startswith("--config="))
    scheduler_config = yaml.safe_load(install.mounted_file(objects, scheduler, config_flag.split("=", 1)[1]))
    token = service_account_token(api, "gpusched-scheduler")
    scheduler_config["clientConnection"]["kubeconfig"] = str(
        kubeconfig(workdir / "scheduler.kubeconfig", cluster, "gpusched-scheduler", token)
    )
    scheduler_config["extenders"][0]["urlPrefix"] = env.extender_url
    env.scheduler_config = scheduler_config
    log = cluster.workdir / "kube-scheduler.log"
    env.scheduler_log_start = len(log.read_text(errors="replace").splitlines()) if log.exists() else 0
    cluster.start_scheduler(scheduler_config=scheduler_config)


def _report(api: ApiClient, node: str) -> bool:
    try:
        k8s.request(api, "GET", f"{REPORTS}/{node}")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def uninstall(env: Installed) -> None:
    """Stop the processes and remove what the install created, except the namespace and the CRD
    (a namespace never finishes terminating without kube-controller-manager, and other tests use the CRD)."""
    env.cluster.stop_scheduler()
    for process in env.processes.values():
        process.stop()
    k8s.reset(env.api)
    applier = install.Applier(env.api)
    kept = {"Namespace", "CustomResourceDefinition"}
    applier.delete([o for o in env.objects if o["kind"] not in kept])
    for path in [LEASE, EXTENDER_LEASE, *(f"{REPORTS}/{n}" for n in NODES)]:
        try:
            k8s.request(env.api, "DELETE", path)
        except ApiException as exc:
            if exc.status != 404:
                raise
    env.api.close()


@pytest.fixture(scope="module")
def installed(control_plane: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    env = install_gpusched(control_plane, tmp_path_factory.mktemp("install"))
    try:
        yield env
    finally:
        for process in env.processes.values():
            print(f"--- {process.name} log (tail)\n{process.tail(15)}")
        uninstall(env)
