"""Builders for nodes, pods and reports used across the test tiers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from scheduler.core.scenario import interconnect_links, pod_object
from scheduler.core.types import GpuInfo, NodeState

GiB = 2**30


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
