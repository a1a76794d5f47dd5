"""Real gRPC servers on unix sockets that play the kubelet (PodResources v1) and a container runtime
(CRI ImageService), answering from in-memory data. For tests and for running the agent by hand
on a machine without a kubelet::

    with FakeKubelet(tmp / "kubelet.sock") as kubelet:
        kubelet.assign("team-a/train-0", "nvidia.com/gpu", ["GPU-...", "GPU-..."])
        ...  # gpusched-agent --podresources-socket tmp/kubelet.sock

The servers use the same generated service code as the clients, so requests cross a real
socket, HTTP/2 and protobuf encoding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from gpu_agent.cri import api_pb2 as cri_pb2
from gpu_agent.cri import api_pb2_grpc as cri_grpc
from gpu_agent.podresources import api_pb2 as pr_pb2
from gpu_agent.podresources import api_pb2_grpc as pr_grpc


@dataclass
class _Container:
    name: str
    devices: dict[str, list[str]] = field(default_factory=dict)
    claimed: list[tuple[str, str]] = field(default_factory=list)  # DRA (driver, device name)


class _Server:
    def __init__(self, socket_path: Path, register: Callable[[grpc.Server], None]) -> None:
        self.socket_path = Path(socket_path)
        self._register = register
        self._server: grpc.Server | None = None
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def start(self) -> None:
        if self._server is not None:
            return
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._register(server)
        server.add_insecure_port(f"unix://{self.socket_path.resolve()}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeKubelet(_Server, pr_grpc.PodResourcesListerServicer):
    """PodResourcesLister: List, GetAllocatableResources and Get over ``socket_path``."""

    def __init__(self, socket_path: Path, allocatable: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(socket_path, lambda server: pr_grpc.add_PodResourcesListerServicer_to_server(self, server))
        self.pods: dict[str, list[_Container]] = {}
        self.allocatable_devices: dict[str, list[str]] = {k: list(v) for k, v in (allocatable or {}).items()}
        self.fail_with: grpc.StatusCode | None = None

    def assign(self, pod: str, resource: str, device_ids: Iterable[str], container: str = "main") -> None:
        """Give ``pod`` ("namespace/name") the devices of ``resource`` in ``container``."""
        with self.lock:
            self._container(pod, container).devices.setdefault(resource, []).extend(device_ids)

    def claim(self, pod: str, driver: str, device_names: Iterable[str], container: str = "main") -> None:
        """Give ``pod`` DRA devices of ``driver`` in ``container``, as an allocated ResourceClaim."""
        with self.lock:
            self._container(pod, container).claimed.extend((driver, name) for name in device_names)

    def _container(self, pod: str, name: str) -> _Container:
        containers = self.pods.setdefault(pod, [])
        for c in containers:
            if c.name == name:
                return c
        containers.append(_Container(name))
        return containers[-1]

    def remove(self, pod: str) -> None:
        with self.lock:
            self.pods.pop(pod, None)

    def _pod_message(self, key: str, containers: list[_Container]) -> pr_pb2.PodResources:
        namespace, name = key.split("/", 1)
        return pr_pb2.PodResources(
            name=name,
            namespace=namespace,
            containers=[
                pr_pb2.ContainerResources(
                    name=c.name,
                    devices=[pr_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in c.devices.items()],
                    dynamic_resources=[
                        pr_pb2.DynamicResource(
                            claim_name=f"{name}-gpus",
                            claim_namespace=namespace,
                            claim_resources=[
                                pr_pb2.ClaimResource(driver_name=driver, pool_name="node", device_name=device)
                                for driver, device in c.claimed
                            ],
                        )
                    ]
                    if c.claimed
                    else [],
                )
                for c in containers
            ],
        )

    def _check(self, context: grpc.ServicerContext) -> None:
        if self.fail_with is not None:
            context.abort(self.fail_with, "fake kubelet told to fail")

    def List(self, request: Any, context: grpc.ServicerContext) -> pr_pb2.ListPodResourcesResponse:
        self._count("List")
        self._check(context)
        with self.lock:
            items = [self._pod_message(k, v) for k, v in sorted(self.pods.items())]
        return pr_pb2.ListPodResourcesResponse(pod_resources=items)

    def GetAllocatableResources(
        self, request: Any, context: grpc.ServicerContext
    ) -> pr_pb2.AllocatableResourcesResponse:
        self._count("GetAllocatableResources")
        self._check(context)
        with self.lock:
            devices = [
                pr_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in self.allocatable_devices.items()
            ]
        return pr_pb2.AllocatableResourcesResponse(devices=devices)

    def Get(self, request: Any, context: grpc.ServicerContext) -> pr_pb2.GetPodResourcesResponse:
        self._count("Get")
        self._check(context)
        key = f"{request.pod_namespace}/{request.pod_name}"
        with self.lock:
            containers = self.pods.get(key)
        if containers is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"pod {key} not found")
            raise AssertionError("context.abort raises")
        with self.lock:
            return pr_pb2.GetPodResourcesResponse(pod_resources=self._pod_message(key, containers))


class FakeImageService(_Server, cri_grpc.ImageServiceServicer):
    """runtime.v1.ImageService: ListImages answering from :attr:`images`, ImageFsInfo from
    :attr:`image_filesystems` (mount point and the bytes images use there, as containerd answers)."""

    def __init__(
        self,
        socket_path: Path,
        images: Iterable[Mapping[str, Any]] = (),
        image_filesystems: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(socket_path, lambda server: cri_grpc.add_ImageServiceServicer_to_server(self, server))
        self.images: list[dict[str, Any]] = [dict(i) for i in images]
        self.image_filesystems: list[dict[str, Any]] = [dict(f) for f in image_filesystems]
        self.fail_with: grpc.StatusCode | None = None

    def ImageFsInfo(self, request: Any, context: grpc.ServicerContext) -> cri_pb2.ImageFsInfoResponse:
        self._count("ImageFsInfo")
        if self.fail_with is not None:
            context.abort(self.fail_with, "fake runtime told to fail")
        return cri_pb2.ImageFsInfoResponse(
            image_filesystems=[
                cri_pb2.FilesystemUsage(
                    timestamp=1,
                    fs_id=cri_pb2.FilesystemIdentifier(mountpoint=str(f["mountpoint"])),
                    used_bytes=cri_pb2.UInt64Value(value=int(f.get("usedBytes", 0))),
                    inodes_used=cri_pb2.UInt64Value(value=int(f.get("inodesUsed", 0))),
                )
                for f in self.image_filesystems
            ]
        )

    def ListImages(self, request: Any, context: grpc.ServicerContext) -> cri_pb2.ListImagesResponse:
        self._count("ListImages")
        if self.fail_with is not None:
            context.abort(self.fail_with, "fake runtime told to fail")
        return cri_pb2.ListImagesResponse(
            images=[
                cri_pb2.Image(
                    id=i["id"],
                    repo_tags=i.get("tags", ()),
                    repo_digests=i.get("digests", ()),
                    size=int(i.get("size", 0)),
                )
                for i in self.images
            ]
        )
