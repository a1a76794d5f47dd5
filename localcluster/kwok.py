"""Fake GPU nodes that run pods: KWOK's configuration and the nodes of a scenario file.

KWOK's controller (``sigs.k8s.io/kwok``, built by :mod:`localcluster.build`) plays the kubelet of
every node annotated ``kwok.x-k8s.io/node: fake``. What it does to nodes and pods is given by
Stage objects, here written into its configuration file (:func:`kwok_configuration`):

- ``node-initialize`` makes a new node Ready, keeping the capacity localcluster gave it
  (``nvidia.com/gpu`` included); ``node-heartbeat`` refreshes its conditions every 20-45 s;
- ``pod-ready`` runs every pod bound to a fake node: Ready, containers running, a pod IP;
- ``pod-complete`` ends a running pod owned by a Job (exit code 0, phase Succeeded) after
  ``job_seconds``, or after the pod's ``pod-complete.stage.kwok.x-k8s.io/delay`` annotation
  (a Go duration such as ``45s``) when it has one; pods of Deployments run until deleted;
- ``pod-delete`` removes a pod once it is being deleted, as a kubelet would after its containers
  stopped.

The stages follow KWOK's own ``kustomize/stage/node`` and ``kustomize/stage/pod/fast`` sets.

Nodes come from a scenario file (``scheduler/core/scenario.py``: ``nodeTypes`` and ``nodes``, with
counts, labels and GPUs); its ``pods`` are created bound to their nodes, so the cluster starts
with work already running. :func:`report_objects` gives each node the GPUNodeReport its agent
would publish (no agent runs on a fake node; :mod:`localcluster.reporter` keeps them fresh).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from scheduler.core.types import NodeState

# The scenario format's own parser (scheduler.core.scenario) is imported where a scenario is read,
# so that starting a cluster without one does not load the scheduler's core.

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_VALUE = "fake"
COMPLETE_DELAY_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/delay"
DEFAULT_JOB_SECONDS = 30.0
GPU_RESOURCE = "nvidia.com/gpu"
TERMINAL_PHASES = ("Succeeded", "Failed")

_NODE_CONDITIONS = """\
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""

_NODE_INITIALIZE = (
    """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
"""
    + _NODE_CONDITIONS
    + """\
addresses:
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
- address: {{ .metadata.name | Quote }}
  type: Hostname
{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: amd64
  bootID: ""
  containerRuntimeVersion: {{ $kwokVersion }}
  kernelVersion: {{ $kwokVersion }}
  kubeProxyVersion: {{ $kwokVersion }}
  kubeletVersion: {{ $kwokVersion }}
  machineID: ""
  operatingSystem: linux
  osImage: ""
  systemUUID: ""
phase: Running
"""
)

_POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" )
     ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""

_POD_COMPLETE = """\
{{ $now := Now }}
{{ $started := or .status.startTime $now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  reason: PodCompleted
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  reason: PodCompleted
  status: "False"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $started | Quote }}
{{ end }}
phase: Succeeded
"""


def _stage(name: str, kind: str, match: list[dict[str, Any]], nxt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": match},
            **extra,
            "next": nxt,
        },
    }


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'
NOT_DELETING = _expr(".metadata.deletionTimestamp", "DoesNotExist")


def stages(job_seconds: float = DEFAULT_JOB_SECONDS) -> list[dict[str, Any]]:
    """The Stage objects described in the module docstring."""
    if job_seconds < 0:
        raise ValueError(f"job_seconds must be >= 0, got {job_seconds}")
    return [
        _stage("node-initialize", "Node", [_expr(READY, "NotIn", "True")], {"statusTemplate": _NODE_INITIALIZE}),
        _stage(
            "node-heartbeat",
            "Node",
            [_expr(".status.phase", "In", "Running"), _expr(READY, "In", "True")],
            {
                "statusTemplate": "{{ $now := Now }}\n"
                "{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}\n" + _NODE_CONDITIONS
            },
            delay={"durationMilliseconds": 20000, "jitterDurationMilliseconds": 45000},
            immediateNextStage=True,
        ),
        _stage(
            "pod-ready",
            "Pod",
            [NOT_DELETING, _expr(".status.phase", "In", "Pending"), _expr(READY, "NotIn", "True")],
            {"statusTemplate": _POD_READY},
        ),
        _stage(
            "pod-complete",
            "Pod",
            [
                NOT_DELETING,
                _expr(".status.phase", "In", "Running"),
                _expr(READY, "In", "True"),
                _expr(".metadata.ownerReferences.[].kind", "In", "Job"),
            ],
            {"statusTemplate": _POD_COMPLETE},
            delay={
                "durationMilliseconds": round(job_seconds * 1000),
                "durationFrom": {"expressionFrom": f'.metadata.annotations["{COMPLETE_DELAY_ANNOTATION}"]'},
            },
        ),
        _stage("pod-delete", "Pod", [_expr(".metadata.deletionTimestamp", "Exists")], {"delete": True}),
    ]


def kwok_configuration(job_seconds: float = DEFAULT_JOB_SECONDS) -> list[dict[str, Any]]:
    """KWOK's configuration file: which nodes it manages, then the stages."""
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "manageAllNodes": False,
            "manageNodesWithAnnotationSelector": f"{FAKE_NODE_ANNOTATION}={FAKE_NODE_VALUE}",
            # Heartbeats through node status (the node-heartbeat stage), not Leases.
            "nodeLeaseDurationSeconds": 0,
            "cidr": "10.244.0.0/16",
            # KWOK applies no defaults to a configuration file it is given: its own defaults.
            "podPlayStageParallelism": 4,
            "nodePlayStageParallelism": 4,
            "nodeLeaseParallelism": 4,
            "podsOnNodeSyncParallelism": 1,
            "enablePodsOnNodeSyncListPager": True,
        },
    }
    return [config, *stages(job_seconds)]


def write_configuration(path: Path, job_seconds: float = DEFAULT_JOB_SECONDS) -> Path:
    path.write_text(yaml.safe_dump_all(kwok_configuration(job_seconds), sort_keys=False))
    return path


# ---------------------------------------------------------------------------- scenario nodes


def load_scenario(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a scenario is a mapping with nodeTypes and nodes")
    return dict(data)


def scenario_nodes(scenario: Mapping[str, Any]) -> list[NodeState]:
    """The scenario's nodes, parsed by the scenario format's own loader."""
    from scheduler.core.scenario import load_nodes

    return load_nodes(scenario)


def node_object(node: NodeState, gpu_resource: str = GPU_RESOURCE) -> dict[str, Any]:
    """A Node for KWOK to manage: labels from the scenario, capacity as a kubelet would report it.

    Its status carries capacity only; KWOK's ``node-initialize`` stage makes it Ready.
    """
    resources = {
        "cpu": f"{node.cpu_milli}m",
        "memory": str(node.memory),
        "pods": "110",
        gpu_resource: str(node.gpu_count),
    }
    labels = {
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        **node.labels,
    }
    if node.gpu_count:
        labels["nvidia.com/gpu.present"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels, "annotations": {FAKE_NODE_ANNOTATION: FAKE_NODE_VALUE}},
        "status": {"capacity": resources, "allocatable": resources},
    }


def scenario_pods(scenario: Mapping[str, Any], gpu_resource: str = GPU_RESOURCE) -> list[dict[str, Any]]:
    """The scenario's running pods as Pod objects bound to their nodes (KWOK runs them)."""
    from scheduler.core.scenario import pod_object

    pods = []
    for entry in scenario.get("pods") or ():
        obj = pod_object(entry, gpu_resource)
        obj["metadata"].pop("uid", None)
        pods.append(obj)
    return pods


def _gpus_in_use(pods: Iterable[Mapping[str, Any]], gpu_resource: str) -> dict[str, int]:
    """GPUs held per node by the pods that are bound and not finished."""
    used: dict[str, int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        count = 0
        for container in (pod.get("spec") or {}).get("containers") or ():
            limits = (container.get("resources") or {}).get("limits") or {}
            count += int(limits.get(gpu_resource, 0) or 0)
        used[node] = used.get(node, 0) + count
    return used


def report_objects(
    nodes: Sequence[NodeState],
    pods: Iterable[Mapping[str, Any]],
    *,
    now: _dt.datetime | None = None,
    gpu_resource: str = GPU_RESOURCE,
) -> list[dict[str, Any]]:
    """Each node's GPUNodeReport, as its agent would write it: GPUs, model, memory, CUDA,
    interconnect, caches; ``freeGpus`` counts the GPUs not held by a running or pending pod."""
    when = (now or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    used = _gpus_in_use(pods, gpu_resource)
    reports = []
    for node in nodes:
        if node.report_age_s is None:
            continue  # the scenario says this node has no agent
        spec: dict[str, Any] = {
            "nodeName": node.name,
            "reportTime": when,
            "agentVersion": "localcluster",
            "gpuCount": node.gpu_count,
            "freeGpus": max(node.gpu_count - used.get(node.name, 0), 0),
            "gpus": [
                {
                    "index": gpu.index,
                    "uuid": f"GPU-{node.name}-{gpu.index}",
                    "model": gpu.model,
                    "memoryTotalBytes": gpu.memory,
                    "healthy": True,
                    "healthReasons": [],
                }
                for gpu in node.gpus
            ],
            "topology": {"matrix": [list(row) for row in node.links]},
            "images": [{"name": name, "bytes": size} for name, size in node.images.items()],
            "models": [{"id": model, "bytes": size} for model, size in node.models.items()],
            "loraAdapters": [{"id": lora, "bytes": size} for lora, size in node.lora_adapters.items()],
        }
        if node.driver:
            spec["driverVersion"] = node.driver
        if node.cuda:
            spec["cudaDriverVersion"] = ".".join(str(part) for part in node.cuda)
        bandwidth = {
            key: value
            for key, value in (
                ("pullBytesPerSecond", node.pull_bytes_per_s),
                ("downloadBytesPerSecond", node.download_bytes_per_s),
                ("diskReadBytesPerSecond", node.disk_bytes_per_s),
            )
            if value
        }
        if bandwidth:
            spec["bandwidth"] = bandwidth
        reports.append(
            {
                "apiVersion": "gpusched.io/v1alpha1",
                "kind": "GPUNodeReport",
                "metadata": {"name": node.name},
                "spec": spec,
            }
        )
    return reports
