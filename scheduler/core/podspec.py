"""Parse a Pod object (the API's JSON as a dict) into a PodRequest.

Malformed annotations and quantities never raise: each becomes a message in `PodRequest.errors`
naming the field and value, and the filter answers the pod with that message instead of placing it
on a guess. A pod already bound keeps what did parse (its GPUs above all: they are what it holds);
its errors are logged, since no filter will ever answer it.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping
from typing import Any

from scheduler.core.gang_sources import gang_identity
from scheduler.core.quantity import QuantityError, parse_milli, parse_quantity, parse_version
from scheduler.core.types import PodRequest

PREFIX = "gpusched.io/"
ANN_GPU_MEMORY = PREFIX + "gpu-memory"
ANN_GPU_MODELS = PREFIX + "gpu-models"
ANN_GPU_MILLI = PREFIX + "gpu-milli"
ANN_MODEL = PREFIX + "model"
ANN_MODEL_BYTES = PREFIX + "model-bytes"
ANN_KV_CACHE = PREFIX + "kv-cache"  # KV-cache memory of one replica, over all its GPUs (e.g. 20Gi)
ANN_LORA = PREFIX + "lora-adapters"
ANN_CUDA = PREFIX + "cuda"
ANN_WORKLOAD = PREFIX + "workload"
ANN_GPU_IDS = PREFIX + "gpu-ids"  # written by gpusched at bind time
# Written on every gang member before the first of its Bindings, so that a restarted extender
# finishes a gang whose binding was under way.
ANN_GANG_PLAN = PREFIX + "gang-plan"
ANN_PLANNED_NODE = PREFIX + "planned-node"
ANN_RANK = PREFIX + "rank"
ANN_TOPOLOGY_PATH = PREFIX + "topology-path"
WORKLOADS = ("training", "inference")
# The NVIDIA device plugin's "mixed" MIG strategy: one resource per profile, nvidia.com/mig-1g.12gb.
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"

log = logging.getLogger("gpusched.podspec")


def _list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _resources(pod_spec: Mapping[str, Any], gpu_resource: str, errors: list[str]) -> tuple[int, int, int]:
    """(gpus, cpu milli, memory bytes) summed over containers.

    Init containers run one at a time, so the pod needs the larger of their maximum and the sum of
    the app containers, as kube-scheduler counts it. Each value is read on its own: one that does not
    parse is counted as 0 and named in `errors` (container, field, value), and the others still
    count, so a bound pod with a bad CPU figure still holds its GPUs.
    """

    def read(container: Mapping[str, Any], key: str, parse: Callable[[Any], int]) -> int:
        resources = container.get("resources") or {}
        for source in ("requests", "limits") if key != gpu_resource else ("limits", "requests"):
            raw = (resources.get(source) or {}).get(key)
            if raw is not None:
                try:
                    return parse(raw)
                except QuantityError as exc:
                    errors.append(f"containers[{container.get('name', '?')}] {source}.{key}: {exc}")
                    return 0
        return 0

    def container_sum(containers: Any, combine: Callable[[int, int], int]) -> list[int]:
        total = [0, 0, 0]
        for container in containers or ():
            if not isinstance(container, Mapping):
                errors.append(f"containers: {container!r} is not a container")
                continue
            values = (
                read(container, gpu_resource, parse_quantity),
                read(container, "cpu", parse_milli),
                read(container, "memory", parse_quantity),
            )
            total = [combine(a, b) for a, b in zip(total, values, strict=True)]
        return total

    app = container_sum(pod_spec.get("containers"), operator.add)
    init = container_sum(pod_spec.get("initContainers"), max)
    gpus, cpu, memory = (max(a, b) for a, b in zip(app, init, strict=True))
    return gpus, cpu, memory


def _mig_resources(pod_spec: Mapping[str, Any], errors: list[str]) -> tuple[str, int]:
    """(profile, instances) of the pod's `nvidia.com/mig-<profile>` resources, ("", 0) without any.

    Counted as kube-scheduler counts an extended resource (limits, else requests; the app
    containers' sum against the largest init container). One profile per pod: a pod that asks for
    two is an error naming both, since gpusched places a pod's instances by one profile.
    """
    app: dict[str, int] = {}
    init: dict[str, int] = {}
    for containers, total, combine in (
        (pod_spec.get("containers"), app, operator.add),
        (pod_spec.get("initContainers"), init, max),
    ):
        for container in containers or ():
            if not isinstance(container, Mapping):
                continue  # _resources names it
            resources = container.get("resources") or {}
            asked: dict[str, Any] = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
            for key, raw in asked.items():
                if not str(key).startswith(MIG_RESOURCE_PREFIX):
                    continue
                profile = str(key)[len(MIG_RESOURCE_PREFIX) :]
                try:
                    count = parse_quantity(raw)
                except QuantityError as exc:
                    errors.append(f"containers[{container.get('name', '?')}] {key}: {exc}")
                    continue
                total[profile] = combine(total.get(profile, 0), count)
    if not (app or init):
        return "", 0  # no MIG resource at all (nearly every pod)
    counts = {p: max(app.get(p, 0), init.get(p, 0)) for p in app.keys() | init.keys()}
    asked_for = sorted(p for p, n in counts.items() if n > 0)
    if len(asked_for) > 1:
        errors.append(f"asks for MIG instances of {len(asked_for)} profiles ({', '.join(asked_for)}); one per pod")
        return "", 0
    return (asked_for[0], counts[asked_for[0]]) if asked_for else ("", 0)


def parse_pod(pod: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> PodRequest:
    """The pod's request; a pod that is not a mapping at all gets an error, not an exception."""
    if not isinstance(pod, Mapping):
        return PodRequest(namespace="", name="", errors=("pod is not an object",))
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    errors: list[str] = []

    def quantity(key: str) -> int:
        raw = annotations.get(key)
        if raw is None:
            return 0
        try:
            return parse_quantity(raw)
        except QuantityError as exc:
            errors.append(f"annotation {key}: {exc}")
            return 0

    try:
        gpus, cpu, memory = _resources(spec, gpu_resource, errors)
    except (AttributeError, TypeError) as exc:  # resources that are not mappings at all
        errors.append(f"resources: {exc}")
        gpus = cpu = memory = 0

    try:
        mig_profile, mig_count = _mig_resources(spec, errors)
    except (AttributeError, TypeError) as exc:  # resources that are not mappings at all
        errors.append(f"resources: {exc}")
        mig_profile, mig_count = "", 0
    if mig_count and gpus:
        errors.append(f"asks for whole GPUs and MIG instances ({MIG_RESOURCE_PREFIX}{mig_profile}); one kind per pod")

    gpu_milli = 0
    if ANN_GPU_MILLI in annotations:
        raw = annotations[ANN_GPU_MILLI]
        try:
            gpu_milli = int(raw)
        except (TypeError, ValueError):
            gpu_milli = -1
        if not 1 <= gpu_milli <= 999:
            errors.append(f"annotation {ANN_GPU_MILLI}: {raw!r} must be a whole number from 1 to 999")
            gpu_milli = 0
        elif gpus > 0:
            errors.append(f"annotation {ANN_GPU_MILLI} asks for a GPU share but the pod also asks for whole GPUs")
        elif mig_count:
            errors.append(f"annotation {ANN_GPU_MILLI} asks for a GPU share but the pod also asks for MIG instances")

    cuda: tuple[int, ...] = ()
    if ANN_CUDA in annotations:
        try:
            cuda = parse_version(annotations[ANN_CUDA])
        except QuantityError:
            errors.append(f"annotation {ANN_CUDA}: {annotations[ANN_CUDA]!r} is not a version (for example 12.4)")

    workload = annotations.get(ANN_WORKLOAD, "")
    if workload and workload not in WORKLOADS:
        errors.append(f"annotation {ANN_WORKLOAD}: {workload!r} must be one of {', '.join(WORKLOADS)}")
        workload = ""

    gang = gang_identity(labels, annotations, spec, errors)
    if gang.pod_group and mig_count:
        # A gang's plan reserves whole GPUs or shares of them (core/gang.py), never MIG instances.
        errors.append(
            f"gang {gang.pod_group}: a gang member cannot ask for MIG instances ({MIG_RESOURCE_PREFIX}{mig_profile})"
        )

    gpu_ids: tuple[int, ...] = ()
    if ANN_GPU_IDS in annotations:
        try:
            gpu_ids = tuple(int(x) for x in _list(annotations[ANN_GPU_IDS]))
        except ValueError:
            gpu_ids = ()  # written by gpusched; a hand-edited value is ignored, not fatal

    owner = ""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            owner = f"{ref.get('kind', '')}/{ref.get('name', '')}"
            break

    node_name = str(spec.get("nodeName") or "")
    if errors and node_name:
        log.warning(
            "pod %s/%s on %s: %s (counted without them)",
            meta.get("namespace"),
            meta.get("name"),
            node_name,
            "; ".join(errors),
        )
    images = tuple(
        c.get("image", "") for c in (spec.get("containers") or ()) if isinstance(c, Mapping) and c.get("image")
    )
    return PodRequest(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        gpu_count=gpus,
        gpu_milli=gpu_milli,
        gpu_memory=quantity(ANN_GPU_MEMORY),
        gpu_models=_list(annotations.get(ANN_GPU_MODELS, "")),
        mig_profile=mig_profile,
        mig_count=mig_count,
        cpu_milli=cpu,
        memory=memory,
        cuda=cuda,
        images=images,
        model=annotations.get(ANN_MODEL, ""),
        model_bytes=quantity(ANN_MODEL_BYTES),
        kv_cache_bytes=quantity(ANN_KV_CACHE),
        lora_adapters=_list(annotations.get(ANN_LORA, "")),
        workload=workload,
        pod_group=gang.pod_group,
        min_member=gang.min_member,
        group_size_ref=gang.size_ref,
        rank=gang.rank,
        priority=priority if isinstance(priority := spec.get("priority"), int) else 0,
        planned_node=annotations.get(ANN_PLANNED_NODE, "") if annotations.get(ANN_GANG_PLAN) else "",
        gang_plan=annotations.get(ANN_GANG_PLAN, ""),
        nominated_node=str((pod.get("status") or {}).get("nominatedNodeName") or ""),
        owner=owner,
        node_name=node_name,
        gpu_ids=gpu_ids,
        errors=tuple(errors),
    )
