"""Builders for nodes, pods and reports used across the test tiers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from scheduler.core.scenario import interconnect_links, pod_object
from scheduler.core.types import GpuInfo, NodeState

GiB = 2**30
# An H100 NVL's memory less what the driver reserves: 100,485,038,080 - 595,591,168 bytes (93.03 GiB).
H100_NVL_USABLE = 99_889_446_912


def gpu_node(
    name: str,
    gpus: int = 8,
    model: str = "H100-80GB",
    memory_gib: int = 80,
    interconnect: str = "nvswitch",
    cuda: tuple[int, ...] = (12, 4),
    labels: dict[str, str] | None = None,
    images: dict[str, int] | None = None,
    models: dict[str, int] | None = None,
    report_age_s: float | None = 0.0,
    cpu_milli: int = 128_000,
    memory: int = 1024 * GiB,
) -> NodeState:
    has_report = report_age_s is not None
    return NodeState(
        name=name,
        labels={"kubernetes.io/hostname": name, **(labels or {})},
        gpu_count=gpus,
        cpu_milli=cpu_milli,
        memory=memory,
        gpus=tuple(GpuInfo(i, model, memory_gib * GiB) for i in range(gpus)) if has_report else (),
        links=interconnect_links(interconnect, gpus) if has_report else (),
        cuda=cuda if has_report else (),
        images=images or {},
        models=(models or {}) if has_report else {},
        report_age_s=report_age_s,
    )


def pod(name: str = "p", gpus: int = 1, annotations: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return pod_object({"name": name, "gpus": gpus, "annotations": annotations or {}, **extra})


def node_object(
    name: str, gpus: int = 8, labels: dict[str, str] | None = None, images: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "128", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
            "images": images or [],
        },
    }


def report_object(
    node: str,
    gpus: int = 8,
    model: str = "H100-80GB",
    memory_gib: int = 80,
    interconnect: str = "nvswitch",
    cuda: str = "12.4",
    reported_at: datetime | None = None,
    holders: dict[int, list[str]] | None = None,
    models: dict[str, int] | None = None,
) -> dict[str, Any]:
    when = (reported_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "gpusched.io/v1alpha1",
        "kind": "GPUNodeReport",
        "metadata": {"name": node},
        "spec": {
            "nodeName": node,
            "reportTime": when,
            "cudaDriverVersion": cuda,
            "driverVersion": "550.54.15",
            "gpuCount": gpus,
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-{node}-{i}",
                    "model": model,
                    "memoryTotalBytes": memory_gib * GiB,
                    "healthy": True,
                    "pods": (holders or {}).get(i, []),
                }
                for i in range(gpus)
            ],
            "topology": {"matrix": [list(row) for row in interconnect_links(interconnect, gpus)]},
            "models": [{"id": k, "bytes": v} for k, v in (models or {}).items()],
        },
    }


def mig_pod(name: str, profile: str = "1g.12gb", count: int = 1, **extra: Any) -> dict[str, Any]:
    """A pod asking for `count` MIG instances by the device plugin's mixed-strategy resource."""
    obj = pod(name, gpus=0, **extra)
    obj["spec"]["containers"][0]["resources"]["limits"][f"nvidia.com/mig-{profile}"] = str(count)
    return obj


def mig_gpu(index: int, instances: list[tuple[str, list[str]]], healthy: bool = True) -> dict[str, Any]:
    """A report's GPU entry for a MIG-enabled H100 NVL (gpu_agent/fake_nvml/machines/h100-mig.json):
    one instance per (profile, holder pods), UUIDs `MIG-<gpu>-<n>`; the GPU's own `pods` lists every
    instance's holders, as the agent writes it."""
    return {
        "index": index,
        "uuid": f"GPU-{index}",
        "model": "NVIDIA H100 NVL",
        "memoryTotalBytes": H100_NVL_USABLE,
        "healthy": healthy,
        "migEnabled": True,
        "migInstances": [
            # "1g.12gb" -> 12e9 bytes: the profile's nominal size stands in for NVML's figure
            {"uuid": f"MIG-{index}-{n}", "profile": p, "memoryBytes": int(p.split(".")[1][:-2]) * 10**9, "pods": h}
            for n, (p, h) in enumerate(instances)
        ],
        "pods": sorted({k for _, h in instances for k in h}),
    }


def with_gpus(report: dict[str, Any], gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """The report with these GPU entries (whole ones from `report_object`, MIG ones from `mig_gpu`)."""
    spec = report["spec"]
    spec["gpus"] = gpus
    spec["gpuCount"] = len(gpus)
    spec["topology"] = {"matrix": [["" if a == b else "nvlink" for b in range(len(gpus))] for a in range(len(gpus))]}
    return report


def reported_node(name: str, gpus: list[dict[str, Any]], allocatable_gpus: int = 0) -> NodeState:
    """A node as the informers build it: its Node object (`allocatable_gpus` of nvidia.com/gpu),
    then its report with these GPU entries."""
    from scheduler.core.objects import node_from_object, with_report

    report = with_gpus(report_object(name), gpus)
    return with_report(
        node_from_object(node_object(name, gpus=allocatable_gpus)), report, datetime.now(UTC).timestamp()
    )


def whole_gpu(index: int, holders: list[str] | None = None) -> dict[str, Any]:
    """A report's entry for a whole H100 80GB that is not MIG-enabled."""
    gpu = report_object("x", gpus=index + 1, holders={index: holders or []})["spec"]["gpus"][index]
    return {**gpu, "migEnabled": False}


def kubeconfig(path: Path, server: str, token: str = "t") -> Path:
    """A kubeconfig at `path` for one API server (`server`, e.g. http://127.0.0.1:PORT) and a token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path
