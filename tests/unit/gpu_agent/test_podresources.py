"""Device ids as the NVIDIA device plugin and DRA driver write them -> GPU indexes."""

from __future__ import annotations

from typing import Any

import pytest

from gpu_agent.cri import api_pb2 as cri_pb2
from gpu_agent.cri.client import image_entries
from gpu_agent.podresources.client import (
    Assignment,
    NodeGpus,
    offered_gpus,
    pods_per_gpu,
    resolve_device,
    target,
)

UUIDS = {"GPU-aaa": 0, "GPU-bbb": 1, "GPU-ccc": 2}
MIGS = {"MIG-m1": 2, "MIG-m2": 2}
GPUS = NodeGpus(UUIDS, MIGS, 3)
# The same node as NVML sees it with minor numbers: /dev/nvidia0 is GPU 2, /dev/nvidia2 GPU 0.
MINORS = NodeGpus(UUIDS, MIGS, 3, minors={2: 0, 1: 1, 0: 2}, mig_profiles={"MIG-m1": "1g.12gb", "MIG-m2": "3g.47gb"})


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        ("GPU-bbb", (1, None)),
        ("GPU-bbb::3", (1, None)),  # time-sliced replica
        (" GPU-aaa ", (0, None)),
        ("MIG-m2", (2, "MIG-m2")),
        ("2", (2, None)),  # deviceIDStrategy=index
        ("1:0", (1, None)),  # index strategy, MIG device
        ("gpu-1", (1, None)),  # DRA device name, no minor numbers known: the index
        ("gpu-0-mig-1g12gb-19-0", (0, None)),  # a DRA MIG device: its GPU
        ("gpu-3", None),
        ("7", None),
        ("GPU-zzz", None),
        ("", None),
    ],
)
def test_resolve_device(device_id: str, expected: tuple[int, str | None] | None) -> None:
    assert resolve_device(device_id, GPUS) == expected


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        ("gpu-0", (2, None)),  # DRA names GPUs by minor number: /dev/nvidia0 is GPU 2
        ("gpu-2", (0, None)),
        ("gpu-3", None),  # no such minor here
        ("gpu-0-mig-1g12gb-19-0", (2, "MIG-m1")),  # the only 1g.12gb instance of GPU 2
        ("gpu-0-mig-3g47gb-9-4", (2, "MIG-m2")),
        ("gpu-0-mig-7g94gb-0-0", (2, None)),  # no such instance: still its GPU
        ("gpu-2-mig-1g12gb-19-0", (0, None)),  # GPU 0 has no MIG instances
        ("gpu-0-mig-19-0-1", (2, None)),  # the older form names no profile: its GPU only
        ("2", (2, None)),  # deviceIDStrategy=index stays the NVML index
        ("GPU-aaa", (0, None)),
    ],
)
def test_resolve_device_by_minor_number(device_id: str, expected: tuple[int, str | None] | None) -> None:
    assert resolve_device(device_id, MINORS) == expected


def test_two_instances_of_one_profile_are_not_told_apart_by_a_dra_name() -> None:
    same = NodeGpus(UUIDS, MIGS, 3, minors={0: 2}, mig_profiles={"MIG-m1": "1g.12gb", "MIG-m2": "1g.12gb"})
    assert resolve_device("gpu-0-mig-1g12gb-19-0", same) == (2, None)


def test_pods_per_gpu_groups_and_dedupes() -> None:
    assignments = [
        Assignment("a/train-0", "main", "nvidia.com/gpu", "GPU-aaa"),
        Assignment("a/train-0", "sidecar", "nvidia.com/gpu", "GPU-aaa"),
        Assignment("b/infer", "main", "nvidia.com/gpu.shared", "GPU-aaa::1"),
        Assignment("c/small", "main", "nvidia.com/mig-1g.10gb", "MIG-m1"),
        Assignment("d/other", "main", "nvidia.com/gpu", "GPU-elsewhere"),
    ]
    grouped = pods_per_gpu(assignments, GPUS)
    assert grouped.by_gpu == {0: ("a/train-0", "b/infer"), 2: ("c/small",)}
    assert grouped.by_mig == {"MIG-m1": ("c/small",)}
    assert grouped.unmapped == 1


def test_offered_gpus() -> None:
    allocatable = {"nvidia.com/gpu": ("GPU-aaa::0", "GPU-aaa::1"), "nvidia.com/mig-1g.10gb": ("MIG-m1",)}
    assert offered_gpus(allocatable, GPUS) == {0, 2}


def test_target_accepts_paths_and_urls() -> None:
    assert target("unix:///var/lib/kubelet/pod-resources/kubelet.sock").startswith("unix:///var/lib")
    assert target("/run/x.sock") == "unix:///run/x.sock"


def test_image_entries_name_tags_and_digests() -> None:
    image = cri_pb2.Image(
        id="sha256:1111",
        repo_tags=["registry.example/llm:1", "registry.example/llm:latest"],
        repo_digests=["registry.example/llm@sha256:2222"],
        size=15_000_000_000,
    )
    entries = image_entries(image)
    assert [e.name for e in entries] == [
        "registry.example/llm:1",
        "registry.example/llm:latest",
        "registry.example/llm@sha256:2222",
    ]
    assert {(e.digest, e.bytes, e.image_id) for e in entries} == {("sha256:2222", 15_000_000_000, "sha256:1111")}
    untagged = image_entries(cri_pb2.Image(id="sha256:3333", size=5))
    assert untagged == []


def test_cri_stubs_keep_upstream_wire_format() -> None:
    """The trimmed CRI proto keeps upstream's service path and field numbers, so real runtimes answer."""
    service = cri_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert service.full_name == "runtime.v1.ImageService"
    assert {m.name for m in service.methods} == {"ListImages", "ImageFsInfo"}

    def numbers(message: Any) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(cri_pb2.ListImagesRequest) == {"filter": 1}
    assert numbers(cri_pb2.ListImagesResponse) == {"images": 1}
    assert numbers(cri_pb2.Image) == {
        "id": 1,
        "repo_tags": 2,
        "repo_digests": 3,
        "size": 4,
        "uid": 5,
        "username": 6,
        "spec": 7,
        "pinned": 8,
    }
    assert numbers(cri_pb2.ImageSpec) == {
        "image": 1,
        "annotations": 2,
        "user_specified_image": 18,
        "runtime_handler": 19,
        "image_ref": 20,
    }
    assert numbers(cri_pb2.ImageFsInfoResponse) == {"image_filesystems": 1, "container_filesystems": 2}
    assert numbers(cri_pb2.FilesystemUsage) == {"timestamp": 1, "fs_id": 2, "used_bytes": 3, "inodes_used": 4}
    assert numbers(cri_pb2.FilesystemIdentifier) == {"mountpoint": 1}
    assert numbers(cri_pb2.UInt64Value) == numbers(cri_pb2.Int64Value) == {"value": 1}
    # Wire bytes as upstream encodes them: field 1 string, 2/3 repeated strings, 4 varint.
    image = cri_pb2.Image(id="i", repo_tags=["t"], repo_digests=["d"], size=5)
    assert image.SerializeToString() == b"\n\x01i\x12\x01t\x1a\x01d\x20\x05"
