"""PodResources v1 over the kubelet's unix socket: List and GetAllocatableResources.

Device ids are mapped to GPUs the way NVIDIA's device plugin and DRA driver name them:

- ``GPU-<uuid>`` (the default ``deviceIDStrategy=uuid``), optionally ``::<n>`` for a time-sliced
  replica -> that GPU;
- ``MIG-<uuid>`` -> that MIG instance and its parent GPU;
- ``<index>`` or ``<index>:<mig>`` (``deviceIDStrategy=index``) -> GPU ``index``;
- DRA claims of drivers named ``*nvidia.com``: UUIDs, ``gpu-<minor>`` (the GPU whose
  ``/dev/nvidia<minor>`` it is: the minor number, which need not be the NVML index; the index
  only where NVML gave no minor numbers) and MIG devices ``gpu-<minor>-mig-...`` -> the parent
  GPU, and the instance where the name's profile (``gpu-0-mig-1g12gb-19-0``: dots dropped) is
  that of exactly one instance of the GPU (the name's placement is not in the report, so two
  instances of one profile cannot be told apart).

Only resources of the ``nvidia.com/`` vendor domain are read; ids that name no GPU of this
node are counted in :attr:`GpuPods.unmapped` and otherwise ignored.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gpu_agent.podresources import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
VENDOR_PREFIX = "nvidia.com/"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Reconnect within a sampling interval after the kubelet (or runtime) restarts.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
)

_REPLICA = re.compile(r"::\d+$")
_INDEX = re.compile(r"^(\d+)(?::(\d+))?$")
_DRA_GPU = re.compile(r"^gpu-(\d+)$")
_DRA_MIG = re.compile(r"^gpu-(\d+)-mig-([^-]+)")


@dataclass(frozen=True)
class NodeGpus:
    """The names of this node's GPUs, from the NVML sample."""

    uuids: Mapping[str, int]  # GPU UUID -> index
    mig_parents: Mapping[str, int]  # MIG UUID -> its GPU's index
    count: int
    minors: Mapping[int, int] = field(default_factory=dict)  # minor number -> index; {}: unknown
    mig_profiles: Mapping[str, str] = field(default_factory=dict)  # MIG UUID -> profile ("1g.12gb")

    def by_dra_number(self, number: int) -> int | None:
        """The GPU a DRA name's number names: by minor number, by index where minors are unknown."""
        if self.minors:
            return self.minors.get(number)
        return number if number < self.count else None


@dataclass(frozen=True)
class Assignment:
    """One device the kubelet assigned to one container."""

    pod: str  # "namespace/name"
    container: str
    resource: str
    device_id: str


@dataclass(frozen=True)
class GpuPods:
    """Pods per GPU index and per MIG instance UUID, as the kubelet assigned them."""

    by_gpu: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    by_mig: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unmapped: int = 0


def target(socket: str) -> str:
    """A socket path (or ``unix://`` URL) -> a gRPC target."""
    return socket if socket.startswith("unix:") else f"unix://{Path(socket).resolve()}"


class PodResourcesClient:
    """A channel to the kubelet's PodResources socket; reconnects by itself when the kubelet restarts."""

    def __init__(self, socket: str = DEFAULT_SOCKET, *, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target(socket), options=list(CHANNEL_OPTIONS))
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list(self) -> list[Assignment]:
        """Every device of the ``nvidia.com/`` domain assigned to a container, device plugin or DRA."""
        response = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        out: list[Assignment] = []
        for pod in response.pod_resources:
            key = f"{pod.namespace}/{pod.name}"
            for container in pod.containers:
                for devices in container.devices:
                    if devices.resource_name.startswith(VENDOR_PREFIX):
                        out.extend(
                            Assignment(key, container.name, devices.resource_name, device_id)
                            for device_id in devices.device_ids
                        )
                for claim in container.dynamic_resources:
                    for resource in claim.claim_resources:
                        if resource.driver_name.endswith("nvidia.com") and resource.device_name:
                            out.append(Assignment(key, container.name, resource.driver_name, resource.device_name))
        return out

    def allocatable(self) -> dict[str, tuple[str, ...]]:
        """Device ids the kubelet can hand out, per ``nvidia.com/`` resource (healthy devices only:
        a device plugin withholds the ones it finds unhealthy)."""
        response = self._stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(), timeout=self.timeout)
        out: dict[str, list[str]] = defaultdict(list)
        for devices in response.devices:
            if devices.resource_name.startswith(VENDOR_PREFIX):
                out[devices.resource_name].extend(devices.device_ids)
        return {name: tuple(ids) for name, ids in out.items()}


def resolve_device(device_id: str, gpus: NodeGpus) -> tuple[int, str | None] | None:
    """(GPU index, MIG UUID or None) for one device id, None when it names no GPU here."""
    ident = _REPLICA.sub("", device_id.strip())
    if ident in gpus.uuids:
        return gpus.uuids[ident], None
    if ident in gpus.mig_parents:
        return gpus.mig_parents[ident], ident
    match = _INDEX.match(ident)
    if match and int(match.group(1)) < gpus.count:
        return int(match.group(1)), None
    match = _DRA_GPU.match(ident)
    if match:
        index = gpus.by_dra_number(int(match.group(1)))
        return (index, None) if index is not None else None
    match = _DRA_MIG.match(ident)
    if match:
        index = gpus.by_dra_number(int(match.group(1)))
        if index is None:
            return None
        wanted = match.group(2).lower()
        same = [
            uuid
            for uuid, profile in gpus.mig_profiles.items()
            if gpus.mig_parents.get(uuid) == index and profile.replace(".", "").lower() == wanted
        ]
        return index, same[0] if len(same) == 1 else None
    return None


def pods_per_gpu(assignments: Iterable[Assignment], gpus: NodeGpus) -> GpuPods:
    """Group assignments by GPU index (a MIG instance's pods also count for its parent GPU)."""
    by_gpu: dict[int, set[str]] = defaultdict(set)
    by_mig: dict[str, set[str]] = defaultdict(set)
    unmapped = 0
    for item in assignments:
        found = resolve_device(item.device_id, gpus)
        if found is None:
            unmapped += 1
            continue
        index, mig = found
        by_gpu[index].add(item.pod)
        if mig is not None:
            by_mig[mig].add(item.pod)
    return GpuPods(
        by_gpu={i: tuple(sorted(p)) for i, p in by_gpu.items()},
        by_mig={u: tuple(sorted(p)) for u, p in by_mig.items()},
        unmapped=unmapped,
    )


def offered_gpus(allocatable: Mapping[str, Sequence[str]], gpus: NodeGpus) -> set[int]:
    """GPU indexes the kubelet can allocate, whole or through a MIG instance or replica."""
    out: set[int] = set()
    for ids in allocatable.values():
        for device_id in ids:
            found = resolve_device(device_id, gpus)
            if found is not None:
                out.add(found[0])
    return out


def describe_error(exc: BaseException) -> str:
    """A short text for a failed call: the gRPC status code and details where there are some."""
    code = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and callable(code):
        details = getattr(exc, "details", None)
        return f"{code().name}: {details() if callable(details) else exc}"
    return f"{type(exc).__name__}: {exc}"
