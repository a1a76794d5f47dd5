"""Node and GPUNodeReport objects (the API's JSON as dicts) -> NodeState. Pure: the caller gives
the current time, so the same code serves the informers, snapshots from a file and the tests.

A report whose GPUs, versions or caches are malformed contributes what parses; a field that does
not parse is left out rather than guessed, and the node is never dropped for it.

A GPU's `memoryTotalBytes` is what pods can use: the agent reports NVML's total less what the
driver reserves. A GPU with `migEnabled` keeps its `migInstances` (uuid, profile, memory, the pods
that hold each); it is never a whole GPU for a pod (core/snapshot.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from scheduler.core.quantity import QuantityError, parse_milli, parse_quantity, parse_version
from scheduler.core.types import GpuInfo, MigInfo, NodeState


def parse_time(text: Any) -> float | None:
    """RFC 3339 time -> POSIX seconds, None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _q(value: Any, parse: Any = parse_quantity) -> int:
    try:
        return int(parse(value)) if value is not None else 0
    except (QuantityError, TypeError, ValueError):
        return 0


def node_from_object(node: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> NodeState:
    """What the Node object itself says: allocatable, labels, readiness and status.images."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    allocatable = status.get("allocatable") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    )
    images: dict[str, int] = {}
    for image in status.get("images") or ():
        size = _q(image.get("sizeBytes"))
        for name in image.get("names") or ():
            images[str(name)] = size
    return NodeState(
        name=str(meta.get("name", "")),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        gpu_count=_q(allocatable.get(gpu_resource)),
        cpu_milli=_q(allocatable.get("cpu"), parse_milli),
        memory=_q(allocatable.get("memory")),
        ready=ready,
        schedulable=not spec.get("unschedulable", False),
        images=images,
    )


def _entries(spec: Mapping[str, Any], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in spec.get(key) or ():
        if isinstance(item, Mapping):
            ident = item.get("id") or item.get("name")
            if ident:
                out[str(ident)] = _q(item.get("bytes"))
    return out


def _mig_instances(gpu: Mapping[str, Any]) -> tuple[MigInfo, ...]:
    """The GPU's `migInstances` that name a UUID and a profile (one without either could be
    neither asked for nor told apart, so it is left out)."""
    out = []
    for item in gpu.get("migInstances") or ():
        if isinstance(item, Mapping) and item.get("uuid") and item.get("profile"):
            out.append(
                MigInfo(
                    uuid=str(item["uuid"]),
                    profile=str(item["profile"]),
                    memory=_q(item.get("memoryBytes")),
                    holders=tuple(str(p) for p in item.get("pods") or ()),
                )
            )
    return tuple(out)


def _disk(spec: Mapping[str, Any], part: str) -> tuple[int, int]:
    """(free, total) bytes of `spec.disk[part]`; (-1, -1) when absent or not 0 <= free <= total."""
    disk = spec.get("disk")
    entry = disk.get(part) if isinstance(disk, Mapping) else None
    if not isinstance(entry, Mapping):
        return -1, -1
    free, total = entry.get("freeBytes"), entry.get("totalBytes")
    if not isinstance(free, int) or not isinstance(total, int) or isinstance(free, bool) or isinstance(total, bool):
        return -1, -1
    return (free, total) if 0 <= free <= total else (-1, -1)


def with_report(node: NodeState, report: Mapping[str, Any] | None, now: float) -> NodeState:
    """The node with its report's GPUs, links, versions and caches merged in."""
    if not report:
        return node
    spec = report.get("spec") or {}
    reported_at = parse_time(spec.get("reportTime"))
    gpus = []
    for item in spec.get("gpus") or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("index"), int):
            continue
        gpus.append(
            GpuInfo(
                index=int(item["index"]),
                model=str(item.get("model", "")),
                memory=_q(item.get("memoryTotalBytes")),
                uuid=str(item.get("uuid", "")),
                healthy=bool(item.get("healthy", True)),
                holders=tuple(str(p) for p in item.get("pods") or ()),
                mig_enabled=item.get("migEnabled") is True,
                mig=_mig_instances(item) if item.get("migEnabled") is True else (),
            )
        )
    topology = spec.get("topology") or {}
    matrix = topology.get("matrix") or ()
    links = tuple(tuple(str(x) for x in row) for row in matrix if isinstance(row, list))
    try:
        cuda = parse_version(spec["cudaDriverVersion"]) if spec.get("cudaDriverVersion") else ()
    except QuantityError:
        cuda = ()
    bandwidth = spec.get("bandwidth") or {}
    images = dict(node.images)
    images.update(_entries(spec, "images"))
    image_fs, model_cache = _disk(spec, "imageFilesystem"), _disk(spec, "modelCache")
    return NodeState(
        name=node.name,
        labels=node.labels,
        gpu_count=node.gpu_count,
        cpu_milli=node.cpu_milli,
        memory=node.memory,
        ready=node.ready,
        schedulable=node.schedulable,
        gpus=tuple(sorted(gpus, key=lambda g: g.index)),
        links=links,
        cuda=cuda,
        driver=str(spec.get("driverVersion", "")),
        images=images,
        models=_entries(spec, "models"),
        lora_adapters=_entries(spec, "loraAdapters"),
        pull_bytes_per_s=float(bandwidth.get("pullBytesPerSecond") or 0.0),
        download_bytes_per_s=float(bandwidth.get("downloadBytesPerSecond") or 0.0),
        disk_bytes_per_s=float(bandwidth.get("diskReadBytesPerSecond") or 0.0),
        image_fs_free=image_fs[0],
        image_fs_total=image_fs[1],
        model_cache_free=model_cache[0],
        model_cache_total=model_cache[1],
        # A report with no readable time counts as infinitely old: stale, never trusted as fresh.
        report_age_s=max(now - reported_at, 0.0) if reported_at is not None else float("inf"),
    )
