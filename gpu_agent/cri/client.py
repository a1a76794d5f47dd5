"""ListImages and ImageFsInfo over the container runtime's CRI socket (containerd, CRI-O).

Each image becomes one entry per name it is known by: every repo tag (``repo:tag``) and every
repo digest (``repo@sha256:...``), all with the image's digest and size, as the kubelet lists
names in ``Node.status.images``. :attr:`ImageEntry.image_id` lets callers count each image's
bytes once.

ImageFsInfo names the filesystem(s) the runtime keeps images on (a mount point) and the bytes its
images use there; the runtime does not say how big that filesystem is or how much is free, so
the agent measures that with ``statvfs`` on the mount point (as the kubelet does through
cAdvisor), see :func:`gpu_agent.inventory.filesystem_usage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gpu_agent.cri import api_pb2, api_pb2_grpc
from gpu_agent.podresources.client import CHANNEL_OPTIONS, target

DEFAULT_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/crio/crio.sock")


@dataclass(frozen=True)
class ImageEntry:
    name: str
    digest: str
    bytes: int
    image_id: str


def image_entries(image: api_pb2.Image) -> list[ImageEntry]:
    digests = [d.split("@", 1)[1] for d in image.repo_digests if "@" in d]
    digest = digests[0] if digests else (image.id if image.id.startswith("sha256:") else "")
    names = list(dict.fromkeys([*image.repo_tags, *image.repo_digests]))
    return [ImageEntry(name=name, digest=digest, bytes=int(image.size), image_id=image.id) for name in names]


@dataclass(frozen=True)
class ImageFilesystem:
    mountpoint: str
    used_bytes: int | None  # bytes the runtime's images use there; None when the runtime leaves it out


def image_filesystems(response: api_pb2.ImageFsInfoResponse) -> list[ImageFilesystem]:
    out: list[ImageFilesystem] = []
    for usage in response.image_filesystems:
        mountpoint = usage.fs_id.mountpoint if usage.HasField("fs_id") else ""
        if not mountpoint:
            continue
        used = int(usage.used_bytes.value) if usage.HasField("used_bytes") else None
        out.append(ImageFilesystem(mountpoint=mountpoint, used_bytes=used))
    return out


class ImageClient:
    def __init__(self, socket: str, *, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target(socket), options=list(CHANNEL_OPTIONS))
        self._stub = api_pb2_grpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ImageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_images(self) -> list[ImageEntry]:
        response = self._stub.ListImages(api_pb2.ListImagesRequest(), timeout=self.timeout)
        entries: list[ImageEntry] = []
        for image in response.images:
            entries.extend(image_entries(image))
        return sorted(entries, key=lambda e: e.name)

    def image_fs_info(self) -> list[ImageFilesystem]:
        """The runtime's image filesystems (mount point, bytes its images use), in its order."""
        response = self._stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=self.timeout)
        return image_filesystems(response)
