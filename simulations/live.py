"""What-ifs on a live cluster: snapshot its Nodes, Pods and GPUNodeReports (raw JSON, the same
conversion the extender's informers use) and replay a manifest's pods on that snapshot.

Questions it answers: where would this manifest land; what if node X drains (its pods must find
room elsewhere); what if we add N nodes like an existing one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from scheduler.core.objects import node_from_object, with_report
from scheduler.core.podspec import parse_pod
from scheduler.core.scenario import ScenarioError
from scheduler.core.types import NodeState, PodRequest
from scheduler.state.informer import REPORTS_PATH
from scheduler.state.kube import Kube, KubeError, load_api_client
from scheduler.state.store import TERMINAL_PHASES
from simulations.whatif import Job

TEMPLATE_KINDS = {"Deployment": "replicas", "StatefulSet": "replicas", "ReplicaSet": "replicas", "Job": "parallelism"}


def snapshot_cluster(
    kubeconfig: str | None, gpu_resource: str = "nvidia.com/gpu"
) -> tuple[list[NodeState], list[PodRequest]]:
    kube = Kube(load_api_client(kubeconfig))
    nodes, _ = kube.list_all("/api/v1/nodes")
    pods, _ = kube.list_all("/api/v1/pods")
    try:
        reports, _ = kube.list_all(REPORTS_PATH)
    except KubeError as exc:
        if exc.status != 404:
            raise
        reports = []  # the CRD is not installed: nodes are known by their allocatable counts only
    by_node = {str(r["metadata"]["name"]): r for r in reports}
    now = time.time()
    states = [with_report(node_from_object(n, gpu_resource), by_node.get(n["metadata"]["name"]), now) for n in nodes]
    running = [
        parse_pod(p, gpu_resource)
        for p in pods
        if (p.get("spec") or {}).get("nodeName") and (p.get("status") or {}).get("phase") not in TERMINAL_PHASES
    ]
    return states, running


def manifest_pods(docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pod objects from a manifest: Pods as they are, workloads expanded from their pod template."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not doc:
            continue
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        if kind == "Pod":
            out.append(copy.deepcopy(dict(doc)))
        elif kind in TEMPLATE_KINDS or kind == "JobSet":
            template = _template(doc)
            count = int((doc.get("spec") or {}).get(TEMPLATE_KINDS.get(str(kind), "replicas"), 1) or 1)
            for i in range(count):
                metadata: dict[str, Any] = copy.deepcopy(dict(template.get("metadata") or {}))
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": metadata,
                    "spec": copy.deepcopy(template.get("spec") or {}),
                }
                metadata["name"] = f"{meta.get('name', kind.lower())}-{i}"
                metadata.setdefault("namespace", meta.get("namespace", "default"))
                if kind == "Job":
                    metadata.setdefault("labels", {})["batch.kubernetes.io/job-completion-index"] = str(i)
                out.append(pod)
    return out


def _template(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "JobSet":
        jobs = spec.get("replicatedJobs") or [{}]
        spec = ((jobs[0].get("template") or {}).get("spec")) or {}
    template: Mapping[str, Any] = spec.get("template") or {}
    return template


def jobs_from_manifest(path: Path, gpu_resource: str = "nvidia.com/gpu") -> list[Job]:
    docs = list(yaml.safe_load_all(path.read_text()))
    pods = [parse_pod(p, gpu_resource) for p in manifest_pods(docs)]
    bad = [p for p in pods if p.errors]
    if bad:
        raise ScenarioError(f"{path}: {bad[0].key}: {'; '.join(bad[0].errors)}")
    gangs: dict[str, list[PodRequest]] = {}
    jobs: list[Job] = []
    for pod in pods:
        if pod.pod_group:
            gangs.setdefault(pod.pod_group, []).append(pod)
        else:
            jobs.append(Job(pod.name, pod.workload or "inference", (pod,), 0.0, None))
    for group, members in gangs.items():
        members.sort(key=lambda p: (p.rank if p.rank is not None else 1 << 30, p.name))
        jobs.append(Job(group, "training", tuple(members), 0.0, None))
    return jobs


def drain(
    nodes: Sequence[NodeState], running: Sequence[PodRequest], names: Sequence[str]
) -> tuple[list[NodeState], list[PodRequest], list[Job]]:
    """Cordon the named nodes; their GPU pods become jobs that must find room elsewhere."""
    wanted = set(names)
    unknown = wanted - {n.name for n in nodes}
    if unknown:
        raise ScenarioError(f"--drain: unknown nodes {', '.join(sorted(unknown))}")
    moved = [p for p in running if p.node_name in wanted]
    nodes = [replace(n, schedulable=False) if n.name in wanted else n for n in nodes]
    keep = [p for p in running if p.node_name not in wanted]
    jobs = [Job(p.name, p.workload or "inference", (replace(p, node_name="", gpu_ids=()),), 0.0, None) for p in moved]
    return nodes, keep, jobs


def add_like(nodes: Sequence[NodeState], like: str, count: int) -> list[NodeState]:
    """`count` new nodes shaped like the existing node `like` (same GPUs, labels, versions; empty caches)."""
    source = next((n for n in nodes if n.name == like), None)
    if source is None:
        raise ScenarioError(f"--add-nodes: no node named {like!r} to copy")
    added = [
        replace(
            source,
            name=f"{like}-new-{i}",
            labels={**source.labels, "kubernetes.io/hostname": f"{like}-new-{i}"},
            images={},
            models={},
            lora_adapters={},
        )
        for i in range(count)
    ]
    return [*nodes, *added]
