"""The agent against a kubelet and a container runtime that are real gRPC servers on unix sockets.

The servers (gpu_agent.fake_kubelet) answer from memory but speak the kubelet's PodResources v1
and the CRI's ImageService over a real socket, HTTP/2 and protobuf, with the generated code.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gpu_agent import fake_nvml
from gpu_agent.agent import NOT_OFFERED, Agent, AgentConfig
from gpu_agent.cri.client import ImageClient
from gpu_agent.fake_kubelet import FakeImageService, FakeKubelet
from gpu_agent.nvml_reader import NvmlReader
from gpu_agent.podresources.client import Assignment, PodResourcesClient
from scheduler.core.objects import node_from_object, with_report

NOW = _dt.datetime(2025, 6, 1, tzinfo=_dt.UTC)


@pytest.fixture
def sockets() -> Iterator[Path]:
    # Unix socket paths are limited to about 100 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="gpusched-") as d:
        yield Path(d)


@pytest.fixture
def reader() -> Iterator[NvmlReader]:
    fake_nvml.activate("dgx-h100")
    r = NvmlReader()
    r.open()
    try:
        yield r
    finally:
        r.close()
        fake_nvml.deactivate()


def uuids(reader: NvmlReader) -> list[str]:
    return [g.uuid for g in reader.read().gpus]


def test_client_list_and_allocatable_over_the_socket(sockets: Path) -> None:
    with FakeKubelet(sockets / "kubelet.sock", allocatable={"nvidia.com/gpu": ["GPU-a", "GPU-b"]}) as kubelet:
        kubelet.assign("team-a/train-0", "nvidia.com/gpu", ["GPU-a"])
        kubelet.assign("team-a/train-0", "cpu-thing.example/dev", ["x"])  # not ours: ignored
        kubelet.assign("team-b/infer", "nvidia.com/gpu", ["GPU-b"], container="server")
        with PodResourcesClient(str(sockets / "kubelet.sock")) as client:
            assert client.list() == [
                Assignment("team-a/train-0", "main", "nvidia.com/gpu", "GPU-a"),
                Assignment("team-b/infer", "server", "nvidia.com/gpu", "GPU-b"),
            ]
            assert client.allocatable() == {"nvidia.com/gpu": ("GPU-a", "GPU-b")}
        assert kubelet.calls == {"List": 1, "GetAllocatableResources": 1}


def test_pods_per_gpu_in_the_report(sockets: Path, reader: NvmlReader) -> None:
    ids = uuids(reader)
    with FakeKubelet(sockets / "kubelet.sock", allocatable={"nvidia.com/gpu": ids[:7]}) as kubelet:
        kubelet.assign("team-a/train-0", "nvidia.com/gpu", ids[0:4])
        kubelet.assign("team-b/infer", "nvidia.com/gpu", [f"{ids[5]}::0"])
        with PodResourcesClient(str(sockets / "kubelet.sock")) as client:
            agent = Agent(AgentConfig(node_name="dgx-01", disk_probe_bytes=0), reader, pods=client, now=lambda: NOW)
            report = agent.collect()
    gpus = report["spec"]["gpus"]
    assert [g["pods"] for g in gpus] == [["team-a/train-0"]] * 4 + [[], ["team-b/infer"], [], []]
    # Finding 3: a GPU the device plugin withdrew is unhealthy, not only warned about.
    assert NOT_OFFERED in gpus[7]["healthReasons"] and gpus[7]["healthy"] is False
    assert all(g["healthy"] for g in gpus[:7])
    node = node_from_object({"metadata": {"name": "dgx-01"}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
    state = with_report(node, report, now=NOW.timestamp())
    assert state.gpus[5].holders == ("team-b/infer",) and state.gpus[4].holders == ()


def test_mig_instances_get_their_pods(sockets: Path) -> None:
    fake_nvml.activate("h100-mig")
    reader = NvmlReader()
    reader.open()
    try:
        sample = reader.read()
        mig = sample.gpus[0].mig_instances[1].uuid
        with FakeKubelet(sockets / "kubelet.sock") as kubelet:
            kubelet.assign("team-c/small", "nvidia.com/mig-2g.24gb", [mig])
            kubelet.assign("team-d/whole", "nvidia.com/gpu", [sample.gpus[1].uuid])
            with PodResourcesClient(str(sockets / "kubelet.sock")) as client:
                report = Agent(AgentConfig(node_name="n", disk_probe_bytes=0), reader, pods=client).collect()
    finally:
        reader.close()
        fake_nvml.deactivate()
    gpu0, gpu1 = report["spec"]["gpus"]
    assert gpu0["pods"] == ["team-c/small"] and gpu1["pods"] == ["team-d/whole"]
    assert [m["pods"] for m in gpu0["migInstances"]] == [[], ["team-c/small"], [], []]
    assert all(not r.startswith("warning: the kubelet") for g in (gpu0, gpu1) for r in g["healthReasons"])


def test_dra_devices_are_found_by_minor_number_and_mig_devices_are_kept(sockets: Path) -> None:
    """h100-mig: /dev/nvidia1 is GPU 0 (MIG: 3g.47gb, 2g.24gb, 2 x 1g.12gb), /dev/nvidia0 is GPU 1."""
    fake_nvml.activate("h100-mig")
    reader = NvmlReader()
    reader.open()
    try:
        sample = reader.read()
        assert [g.minor for g in sample.gpus] == [1, 0]
        with FakeKubelet(sockets / "kubelet.sock") as kubelet:
            kubelet.claim("team-e/dra-whole", "gpu.nvidia.com", ["gpu-0"])
            kubelet.claim("team-f/dra-mig", "gpu.nvidia.com", ["gpu-1-mig-2g24gb-14-4"])
            kubelet.claim("team-g/dra-either", "gpu.nvidia.com", ["gpu-1-mig-1g12gb-19-6"])
            with PodResourcesClient(str(sockets / "kubelet.sock")) as client:
                report = Agent(AgentConfig(node_name="n", disk_probe_bytes=0), reader, pods=client).collect()
    finally:
        reader.close()
        fake_nvml.deactivate()
    gpu0, gpu1 = report["spec"]["gpus"]
    assert gpu1["pods"] == ["team-e/dra-whole"]
    assert gpu0["pods"] == ["team-f/dra-mig", "team-g/dra-either"]
    # 2g.24gb is one instance of GPU 0; which of the two 1g.12gb instances the name means is not
    # in the report (its placement), so that pod holds GPU 0 and no instance.
    assert [m["pods"] for m in gpu0["migInstances"]] == [[], ["team-f/dra-mig"], [], []]


def test_kubelet_restart_drops_then_restores_pods(
    sockets: Path, reader: NvmlReader, caplog: pytest.LogCaptureFixture
) -> None:
    ids = uuids(reader)
    path = sockets / "kubelet.sock"
    kubelet = FakeKubelet(path)
    kubelet.assign("a/p", "nvidia.com/gpu", [ids[2]])
    kubelet.start()
    caplog.set_level(logging.INFO, logger="gpu_agent")
    client = PodResourcesClient(str(path), timeout=2)
    agent = Agent(AgentConfig(node_name="n", disk_probe_bytes=0), reader, pods=client)
    try:
        assert agent.collect()["spec"]["gpus"][2]["pods"] == ["a/p"]
        kubelet.stop()
        report = agent.collect()
        assert all("pods" not in g for g in report["spec"]["gpus"])  # unknown, not "no pods"
        assert agent.state.source_errors == {"podresources": 1}
        kubelet.start()  # the kubelet is back on the same path; the channel reconnects by itself
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            report = agent.collect()
            if "pods" in report["spec"]["gpus"][2]:
                break
            time.sleep(0.2)
        assert report["spec"]["gpus"][2]["pods"] == ["a/p"]
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and warnings[0].startswith("podresources unavailable: UNAVAILABLE")
        assert "podresources answers again" in caplog.messages
        kubelet.fail_with = grpc.StatusCode.UNAVAILABLE
        assert "pods" not in agent.collect()["spec"]["gpus"][0]
    finally:
        client.close()
        kubelet.stop()


def test_images_from_the_cri_image_service(sockets: Path, reader: NvmlReader) -> None:
    images = [
        {
            "id": "sha256:aaa",
            "tags": ["registry.example/vllm:0.6", "registry.example/vllm:latest"],
            "digests": ["registry.example/vllm@sha256:d1"],
            "size": 9_000_000_000,
        },
        {"id": "sha256:bbb", "tags": ["registry.k8s.io/pause:3.10"], "digests": [], "size": 300_000},
    ]
    clock = [0.0]
    with (
        FakeImageService(sockets / "containerd.sock", images) as runtime,
        ImageClient(str(sockets / "containerd.sock")) as client,
    ):
        agent = Agent(
            AgentConfig(node_name="n", disk_probe_bytes=0, inventory_interval=60),
            reader,
            images=client,
            clock=lambda: clock[0],
        )
        report = agent.collect()
        clock[0] = 30
        agent.collect()
        assert runtime.calls == {"ListImages": 1, "ImageFsInfo": 1}  # rescanned only every inventory_interval
        clock[0] = 61
        agent.collect()
        assert runtime.calls == {"ListImages": 2, "ImageFsInfo": 2}
    assert report["spec"]["images"] == [
        {"name": "registry.example/vllm:0.6", "digest": "sha256:d1", "bytes": 9_000_000_000},
        {"name": "registry.example/vllm:latest", "digest": "sha256:d1", "bytes": 9_000_000_000},
        {"name": "registry.example/vllm@sha256:d1", "digest": "sha256:d1", "bytes": 9_000_000_000},
        {"name": "registry.k8s.io/pause:3.10", "digest": "sha256:bbb", "bytes": 300_000},
    ]
    assert agent.state.cache_bytes["image"] == 9_000_300_000  # each image once, not once per name


def test_disk_figures_from_image_fs_info_and_the_model_cache(sockets: Path, reader: NvmlReader) -> None:
    """imageFilesystem: the mount point the runtime's ImageFsInfo names, measured with statvfs
    under --host-root; modelCache: statvfs of the model cache folder."""
    import os

    host = sockets / "host"
    (host / "var/lib/containerd").mkdir(parents=True)
    hf = sockets / "hub"
    hf.mkdir()
    filesystems = [{"mountpoint": "/var/lib/containerd", "usedBytes": 12345}]
    with (
        FakeImageService(sockets / "containerd.sock", [], image_filesystems=filesystems) as runtime,
        ImageClient(str(sockets / "containerd.sock")) as client,
    ):
        assert [(f.mountpoint, f.used_bytes) for f in client.image_fs_info()] == [("/var/lib/containerd", 12345)]
        agent = Agent(
            AgentConfig(node_name="n", disk_probe_bytes=0, hf_cache=hf, host_root=host), reader, images=client
        )
        disk = agent.collect()["spec"]["disk"]
        assert runtime.calls["ImageFsInfo"] == 2
    for part, path in (("imageFilesystem", host / "var/lib/containerd"), ("modelCache", hf)):
        st = os.statvfs(path)
        assert disk[part]["totalBytes"] == st.f_blocks * st.f_frsize
        # free space moves while the test runs; within 64 MiB of a fresh look
        assert abs(disk[part]["freeBytes"] - st.f_bavail * st.f_frsize) < 64 * 2**20
        assert 0 < disk[part]["freeBytes"] <= disk[part]["totalBytes"]


@pytest.mark.parametrize(
    ("filesystems", "fail"),
    [
        ([{"mountpoint": "/no/such/place"}], False),  # named but not visible under --host-root
        ([], False),  # the runtime names none
        ([{"mountpoint": "/"}], True),  # the runtime fails the call
    ],
)
def test_unknown_image_filesystem_is_left_out(
    sockets: Path, reader: NvmlReader, filesystems: list[dict[str, str]], fail: bool
) -> None:
    with (
        FakeImageService(sockets / "containerd.sock", [], image_filesystems=filesystems) as runtime,
        ImageClient(str(sockets / "containerd.sock")) as client,
    ):
        if fail:
            runtime.fail_with = grpc.StatusCode.UNIMPLEMENTED
        agent = Agent(AgentConfig(node_name="n", disk_probe_bytes=0, hf_cache=None), reader, images=client)
        spec = agent.collect()["spec"]
    assert "disk" not in spec


def test_unreachable_runtime_leaves_images_out(sockets: Path, reader: NvmlReader) -> None:
    with ImageClient(str(sockets / "nothing.sock"), timeout=1) as client:
        agent = Agent(AgentConfig(node_name="n", disk_probe_bytes=0), reader, images=client)
        report = agent.collect()
    assert "images" not in report["spec"]
    assert agent.state.source_errors == {"cri": 1}
