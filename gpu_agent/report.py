"""The GPUNodeReport object (CRD ``gpunodereports.gpusched.io``, v1alpha1) built from one sample.

Pure: the caller passes the NVML sample, the pods per GPU, the cache inventory and the time.
Fields a source could not give are left out, never guessed: a GPU without utilisation counters
(MIG mode) has no ``utilizationPercent``; a node whose kubelet socket is not mounted has no
``pods`` lists; a node without a readable model cache has no ``models``.

``memoryTotalBytes`` is what pods can use: NVML's total less what the driver reserves, where NVML's
v2 memory query tells it; ``memoryUsedBytes`` is total minus free, less that reserve. Health reasons
that start with ``warning:`` do not make a GPU unhealthy. ``topology.matrix`` holds ``nvlink``
or the PCIe level (PIX, PXB, PHB, NODE, SYS) per pair, ``""`` on the diagonal and where NVML
could not tell.

:func:`material` is the part of a report whose change is worth an immediate write: everything
except the report time, utilisation, used memory, measured bandwidth and free disk space, which
are refreshed on a slower period.

``disk.imageFilesystem`` is the container runtime's image filesystem (named by the CRI's
ImageFsInfo, measured with statvfs), ``disk.modelCache`` the model cache's filesystem; each
holds ``freeBytes`` and ``totalBytes`` and is absent when unknown.

Bounds, so that GPU and health data always fit (the API refuses objects over about 1.5 MiB and
every watcher receives every write): at most :data:`MAX_IMAGES` images, :data:`MAX_MODELS`
models and :data:`MAX_ADAPTERS` adapters, largest first (the costliest to fetch again); an entry
whose name, id, digest or base model is longer than :data:`MAX_TEXT` characters is dropped, not
cut (a cut name would match nothing or the wrong thing); and while the whole report is over
:data:`MAX_REPORT_BYTES` of JSON, the smallest entries of the longest list go. What was dropped is
counted per list in the ``dropped`` Counter the caller passes (the agent exports it as
``gpusched_agent_report_dropped_entries``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_agent import __version__
from gpu_agent.inventory import CacheScan, FsUsage
from gpu_agent.nvml_reader import GpuSample, NvmlSample

GROUP = "gpusched.io"
VERSION = "v1alpha1"
PLURAL = "gpunodereports"
KIND = "GPUNodeReport"
API_VERSION = f"{GROUP}/{VERSION}"

VOLATILE_GPU_FIELDS = ("utilizationPercent", "memoryUsedBytes")
INVENTORY = ("images", "models", "loraAdapters")

MAX_IMAGES = 500
MAX_MODELS = 200
MAX_ADAPTERS = 200
MAX_TEXT = 512
MAX_REPORT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Bandwidth:
    disk_read_bytes_per_second: float | None = None
    pull_bytes_per_second: float | None = None
    download_bytes_per_second: float | None = None


@dataclass(frozen=True)
class Images:
    entries: Sequence[Any]  # gpu_agent.cri.client.ImageEntry
    total_bytes: int = 0


def rfc3339(moment: _dt.datetime) -> str:
    """UTC, second precision, ``Z`` suffix: the form kube-apiserver writes for date-time fields."""
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gpu(
    gpu: GpuSample, pods: Mapping[int, Sequence[str]] | None, mig_pods: Mapping[str, Sequence[str]] | None
) -> dict[str, Any]:
    item: dict[str, Any] = {"index": gpu.index}
    if gpu.uuid:
        item["uuid"] = gpu.uuid
    if gpu.model:
        item["model"] = gpu.model
    if gpu.memory_total is not None:
        item["memoryTotalBytes"] = gpu.memory_total
    if gpu.memory_used is not None:
        item["memoryUsedBytes"] = gpu.memory_used
    if gpu.utilization is not None:
        item["utilizationPercent"] = gpu.utilization
    if gpu.pci_bus_id:
        item["pciBusId"] = gpu.pci_bus_id
    item["healthy"] = gpu.healthy
    item["healthReasons"] = list(gpu.health_reasons)
    if gpu.mig_enabled is not None:
        item["migEnabled"] = gpu.mig_enabled
    if gpu.mig_enabled:
        instances = []
        for mig in gpu.mig_instances:
            entry: dict[str, Any] = {"uuid": mig.uuid}
            if mig.profile:
                entry["profile"] = mig.profile
            if mig.memory_bytes is not None:
                entry["memoryBytes"] = mig.memory_bytes
            if mig.gpu_instance_id is not None:
                entry["gpuInstanceId"] = mig.gpu_instance_id
            if mig.compute_instance_id is not None:
                entry["computeInstanceId"] = mig.compute_instance_id
            if mig_pods is not None:
                entry["pods"] = list(mig_pods.get(mig.uuid, ()))
            instances.append(entry)
        item["migInstances"] = instances
    if gpu.nvlink_links is not None:
        item["nvlinkActiveLinks"] = gpu.nvlink_links
    if pods is not None:
        item["pods"] = list(pods.get(gpu.index, ()))
    return item


def build_report(
    node_name: str,
    sample: NvmlSample,
    *,
    report_time: _dt.datetime,
    pods: Mapping[int, Sequence[str]] | None = None,
    mig_pods: Mapping[str, Sequence[str]] | None = None,
    images: Images | None = None,
    caches: CacheScan | None = None,
    bandwidth: Bandwidth | None = None,
    image_filesystem: FsUsage | None = None,
    model_cache: FsUsage | None = None,
    agent_version: str = __version__,
    dropped: Counter[str] | None = None,
    max_bytes: int = MAX_REPORT_BYTES,
) -> dict[str, Any]:
    """The whole GPUNodeReport object, ready for server-side apply, within the bounds above."""
    dropped = Counter() if dropped is None else dropped
    spec: dict[str, Any] = {
        "nodeName": node_name,
        "reportTime": rfc3339(report_time),
        "agentVersion": agent_version,
    }
    if sample.driver_version is not None:
        spec["driverVersion"] = sample.driver_version
    if sample.cuda_driver_version is not None:
        spec["cudaDriverVersion"] = sample.cuda_driver_version
    spec["gpuCount"] = len(sample.gpus)
    spec["gpus"] = [_gpu(g, pods, mig_pods) for g in sample.gpus]
    # For `kubectl get gpunodereports`: whole GPUs that are healthy, not split by MIG and held by no pod.
    spec["freeGpus"] = sum(1 for g in spec["gpus"] if g["healthy"] and not g.get("migEnabled") and not g.get("pods"))
    topo = sample.topology
    spec["topology"] = {
        "matrix": [list(row) for row in topo.matrix],
        "nvlinkCounts": [list(row) for row in topo.nvlink_counts],
        "fabricClique": topo.fabric_clique,
    }
    if images is not None:
        spec["images"] = _capped(
            "images",
            [{"name": e.name, "digest": e.digest, "bytes": e.bytes} for e in images.entries],
            MAX_IMAGES,
            dropped,
        )
    if caches is not None and caches.models is not None:
        spec["models"] = _capped("models", [{"id": m.id, "bytes": m.bytes} for m in caches.models], MAX_MODELS, dropped)
    if caches is not None and caches.lora_adapters is not None:
        spec["loraAdapters"] = _capped(
            "loraAdapters",
            [{"id": a.id, "baseModel": a.base_model, "bytes": a.bytes} for a in caches.lora_adapters],
            MAX_ADAPTERS,
            dropped,
        )
    if bandwidth is not None:
        measured = {
            key: value
            for key, value in (
                ("diskReadBytesPerSecond", bandwidth.disk_read_bytes_per_second),
                ("pullBytesPerSecond", bandwidth.pull_bytes_per_second),
                ("downloadBytesPerSecond", bandwidth.download_bytes_per_second),
            )
            if value is not None
        }
        if measured:
            spec["bandwidth"] = measured
    disk = {
        key: {"freeBytes": usage.free_bytes, "totalBytes": usage.total_bytes}
        for key, usage in (("imageFilesystem", image_filesystem), ("modelCache", model_cache))
        if usage is not None
    }
    if disk:
        spec["disk"] = disk
    report = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": node_name}, "spec": spec}
    _fit(report, max_bytes, dropped)
    return report


def _capped(kind: str, entries: list[dict[str, Any]], limit: int, dropped: Counter[str]) -> list[dict[str, Any]]:
    """Entries with no over-long text, largest first, at most ``limit``, in a stable order."""
    kept = [e for e in entries if all(not isinstance(v, str) or len(v) <= MAX_TEXT for v in e.values())]
    if len(kept) < len(entries):
        dropped[kind] += len(entries) - len(kept)
    if len(kept) > limit:
        dropped[kind] += len(kept) - limit
        kept = sorted(kept, key=lambda e: -int(e.get("bytes") or 0))[:limit]
    key = "name" if kind == "images" else "id"
    return sorted(kept, key=lambda e: str(e[key]))


def size(report: Mapping[str, Any]) -> int:
    """Bytes of the report as JSON on the wire (compact)."""
    return len(json.dumps(report, separators=(",", ":")))


def _fit(report: dict[str, Any], max_bytes: int, dropped: Counter[str]) -> None:
    spec = report["spec"]
    total = size(report)
    while total > max_bytes:
        lists = [(len(json.dumps(spec[k])), k) for k in INVENTORY if spec.get(k)]
        if not lists:
            return  # GPUs and health are never dropped
        _, kind = max(lists)
        entries = spec[kind]
        smallest = min(range(len(entries)), key=lambda i: int(entries[i].get("bytes") or 0))
        removed = entries.pop(smallest)
        dropped[kind] += 1
        total -= len(json.dumps(removed, separators=(",", ":"))) + (1 if entries else 0)


def without_inventory(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report less its images, models and adapters: what still fits when the API refuses it."""
    spec = {k: v for k, v in (report.get("spec") or {}).items() if k not in INVENTORY}
    return {**report, "spec": spec}


def material(report: Mapping[str, Any]) -> str:
    """A digest of what matters for placement now (see the module docstring)."""
    spec = dict(report.get("spec") or {})
    spec.pop("reportTime", None)
    spec.pop("bandwidth", None)
    spec.pop("disk", None)
    spec["gpus"] = [{k: v for k, v in gpu.items() if k not in VOLATILE_GPU_FIELDS} for gpu in spec.get("gpus") or ()]
    text = json.dumps({"metadata": report.get("metadata"), "spec": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content(report: Mapping[str, Any]) -> str:
    """A digest of everything but ``reportTime``: equal digests need no write."""
    spec = {k: v for k, v in (report.get("spec") or {}).items() if k != "reportTime"}
    text = json.dumps({"metadata": report.get("metadata"), "spec": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dumps(report: Mapping[str, Any], *, pretty: bool = True) -> str:
    """JSON text of a report: orjson where installed, the standard library otherwise."""
    try:
        import orjson
    except ImportError:
        return json.dumps(report, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(report, option=option).decode()
