"""The scenario format shared by the simulator and the extender's offline mode (parsed data in,
NodeStates and Pod objects out; reading the file is the caller's business).

    nodeTypes:
      dgx-h100: {gpus: 8, gpuModel: H100-80GB, gpuMemory: 80Gi, interconnect: nvswitch,
                 cpu: "224", memory: 2Ti, cuda: "12.4", driver: "550.54.15",
                 pullBandwidth: 100Mi, downloadBandwidth: 200Mi, diskBandwidth: 2Gi}
    nodes:
      - {name: "h100-r1-{i}", count: 4, type: dgx-h100, labels: {network.topology.nvidia.com/leaf: r1},
         images: {"ghcr.io/acme/llm-server:1.4": 15Gi}, models: {"meta-llama/Llama-3.1-8B@main": 16Gi},
         loraAdapters: {}, reportAgeSeconds: 0}        # reportAgeSeconds: null -> no report
    pods:                                               # pods already running
      - {name: train-0, node: h100-r1-0, gpus: 8, gpuIds: [0,1,2,3,4,5,6,7], annotations: {}, labels: {}}

A node type or entry may state its disks as the agent reports them (absent: not reported):

    disk: {imageFilesystem: {total: 100Gi, free: 40Gi}, modelCache: {total: 500Gi}}

`free` defaults to `total` less the bytes of the images (image filesystem) or models (model cache)
the node lists.

`interconnect` is nvswitch (every pair NVLink), nvlink-pairs (GPUs 0-1, 2-3, ... NVLink; otherwise
the same socket half PHB-connected and the other half SYS), pcie (PXB within a socket half, SYS
across), or an explicit `links` matrix of "nvlink" / "PIX" / "PXB" / "PHB" / "NODE" / "SYS".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scheduler.core.podspec import ANN_GPU_IDS, parse_pod
from scheduler.core.quantity import QuantityError, parse_milli, parse_quantity, parse_version
from scheduler.core.types import GpuInfo, NodeState, PodRequest


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message names the entry."""


def interconnect_links(kind: str, gpus: int) -> tuple[tuple[str, ...], ...]:
    half = max(gpus // 2, 1)

    def pair(a: int, b: int) -> str:
        if a == b:
            return ""
        same_half = a // half == b // half
        if kind == "nvswitch":
            return "nvlink"
        if kind == "nvlink-pairs":
            if a // 2 == b // 2:
                return "nvlink"
            return "PHB" if same_half else "SYS"
        if kind == "pcie":
            return "PXB" if same_half else "SYS"
        raise ScenarioError(f"unknown interconnect {kind!r} (nvswitch, nvlink-pairs, pcie, or a links matrix)")

    return tuple(tuple(pair(a, b) for b in range(gpus)) for a in range(gpus))


def _sizes(entry: Mapping[str, Any], key: str, where: str) -> dict[str, int]:
    raw = entry.get(key) or {}
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: {key} must map names to sizes")
    try:
        return {str(k): parse_quantity(v) for k, v in raw.items()}
    except QuantityError as exc:
        raise ScenarioError(f"{where}: {key}: {exc}") from exc


def _disk(spec: Mapping[str, Any], part: str, cached: dict[str, int], where: str) -> tuple[int, int]:
    """(free, total) bytes of `disk.<part>`, (-1, -1) when not stated; free defaults to total - cached."""
    disk = spec.get("disk") or {}
    if not isinstance(disk, Mapping) or set(disk) - {"imageFilesystem", "modelCache"}:
        raise ScenarioError(f"{where}: disk takes imageFilesystem and modelCache")
    entry = disk.get(part)
    if entry is None:
        return -1, -1
    if not isinstance(entry, Mapping) or "total" not in entry or set(entry) - {"total", "free"}:
        raise ScenarioError(f"{where}: disk.{part} takes total and (optionally) free")
    try:
        total = parse_quantity(entry["total"])
        free = parse_quantity(entry["free"]) if entry.get("free") is not None else max(total - sum(cached.values()), 0)
    except QuantityError as exc:
        raise ScenarioError(f"{where}: disk.{part}: {exc}") from exc
    if not 0 <= free <= total:
        raise ScenarioError(f"{where}: disk.{part}: free must be between 0 and total")
    return free, total


def _node(name: str, spec: Mapping[str, Any], labels: dict[str, str], where: str) -> NodeState:
    try:
        gpus = int(spec.get("gpus", 0))
        links = spec.get("links")
        if links is None:
            links = interconnect_links(str(spec.get("interconnect", "pcie")), gpus)
        model = str(spec.get("gpuModel", ""))
        memory = parse_quantity(spec.get("gpuMemory", 0))
        age = spec.get("reportAgeSeconds", 0)
        report = age is not None
        gpu_list = tuple(GpuInfo(index=i, model=model, memory=memory) for i in range(gpus)) if report else ()
        images = _sizes(spec, "images", where)
        models = _sizes(spec, "models", where) if report else {}
        image_fs = _disk(spec, "imageFilesystem", images, where) if report else (-1, -1)
        model_cache = _disk(spec, "modelCache", models, where) if report else (-1, -1)
        return NodeState(
            name=name,
            labels={"kubernetes.io/hostname": name, **labels},
            gpu_count=gpus,
            cpu_milli=parse_milli(spec.get("cpu", "64")),
            memory=parse_quantity(spec.get("memory", "512Gi")),
            ready=bool(spec.get("ready", True)),
            gpus=gpu_list,
            links=tuple(tuple(str(x) for x in row) for row in links) if report else (),
            cuda=parse_version(str(spec["cuda"])) if report and spec.get("cuda") else (),
            driver=str(spec.get("driver", "")),
            images=images,
            models=models,
            lora_adapters=_sizes(spec, "loraAdapters", where) if report else {},
            pull_bytes_per_s=float(parse_quantity(spec.get("pullBandwidth", 0))),
            download_bytes_per_s=float(parse_quantity(spec.get("downloadBandwidth", 0))),
            disk_bytes_per_s=float(parse_quantity(spec.get("diskBandwidth", 0))),
            image_fs_free=image_fs[0],
            image_fs_total=image_fs[1],
            model_cache_free=model_cache[0],
            model_cache_total=model_cache[1],
            report_age_s=float(age) if report else None,
        )
    except (QuantityError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def load_nodes(data: Mapping[str, Any]) -> list[NodeState]:
    types = data.get("nodeTypes") or {}
    nodes: list[NodeState] = []
    seen: set[str] = set()
    for n, entry in enumerate(data.get("nodes") or ()):
        where = f"nodes[{n}]"
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ScenarioError(f"{where}: needs at least a name")
        base = {}
        if "type" in entry:
            if entry["type"] not in types:
                raise ScenarioError(f"{where}: unknown node type {entry['type']!r}")
            base = dict(types[entry["type"]])
        spec = {**base, **{k: v for k, v in entry.items() if k not in ("name", "count", "type", "labels")}}
        count = int(entry.get("count", 1))
        for i in range(count):
            name = str(entry["name"]).format(i=i)
            if name in seen:
                raise ScenarioError(f"{where}: node name {name!r} appears twice")
            seen.add(name)
            labels = {str(k): str(v).format(i=i) for k, v in (entry.get("labels") or {}).items()}
            nodes.append(_node(name, spec, labels, where))
    return nodes


def pod_object(entry: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    """A Pod object (as the API would return it) for a scenario's short pod entry."""
    annotations = {str(k): str(v) for k, v in (entry.get("annotations") or {}).items()}
    if entry.get("gpuIds") is not None:
        annotations[ANN_GPU_IDS] = ",".join(str(i) for i in entry["gpuIds"])
    limits: dict[str, Any] = {}
    if entry.get("gpus"):
        limits[gpu_resource] = str(entry["gpus"])
    requests = {"cpu": str(entry.get("cpu", "1")), "memory": str(entry.get("memory", "1Gi"))}
    spec: dict[str, Any] = {
        "nodeName": entry.get("node") or None,
        "schedulerName": str(entry.get("schedulerName", "default-scheduler")),
        "containers": [
            {
                "name": "main",
                "image": str(entry.get("image", "registry.k8s.io/pause:3.10")),
                "resources": {"limits": limits, "requests": requests},
            }
        ],
    }
    if entry.get("priority") is not None:
        spec["priority"] = int(entry["priority"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": str(entry["name"]),
            "namespace": str(entry.get("namespace", "default")),
            "uid": str(entry.get("uid", f"uid-{entry['name']}")),
            "labels": {str(k): str(v) for k, v in (entry.get("labels") or {}).items()},
            "annotations": annotations,
        },
        "spec": spec,
    }


def load_pods(data: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> list[PodRequest]:
    pods = []
    for n, entry in enumerate(data.get("pods") or ()):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ScenarioError(f"pods[{n}]: needs at least a name")
        pod = parse_pod(pod_object(entry, gpu_resource), gpu_resource)
        if pod.errors:
            raise ScenarioError(f"pods[{n}] ({pod.key}): {'; '.join(pod.errors)}")
        pods.append(pod)
    return pods
