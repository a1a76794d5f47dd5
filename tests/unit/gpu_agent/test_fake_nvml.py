"""The fake NVML library, driven through pynvml's own wrappers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest

from gpu_agent import fake_nvml

Machine = Callable[[str], Path]

EXPECTED = {
    # machine: (GPU count, model, driver, CUDA version, NVLink links of GPU 0)
    "dgx-h100": (8, "NVIDIA H100 80GB HBM3", "550.54.15", 12040, 18),
    "hgx-a100-40gb": (8, "NVIDIA A100-SXM4-40GB", "535.161.08", 12020, 12),
    "l4x4": (4, "NVIDIA L4", "550.90.07", 12040, 0),
    "h100-mig": (2, "NVIDIA H100 NVL", "550.127.05", 12040, 12),
    "gb200-nvl": (4, "NVIDIA GB200", "570.124.06", 12080, 18),
}


def active_links(handle: object) -> int:
    count = 0
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            count += pynvml.nvmlDeviceGetNvLinkState(handle, link)
        except pynvml.NVMLError_NotSupported:
            continue
    return count


def test_bundled_machines_are_the_documented_five() -> None:
    assert fake_nvml.machines() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pynvml_wrappers_read_each_machine(machine: Machine, name: str) -> None:
    count, model, driver, cuda, links = EXPECTED[name]
    fixture = json.loads(machine(name).read_text())
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlDeviceGetCount() == count
        assert pynvml.nvmlSystemGetDriverVersion() == driver
        assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == cuda
        assert pynvml.nvmlSystemGetCudaDriverVersion() == cuda
        for index in range(count):
            spec = fixture["gpus"][index]
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            assert pynvml.nvmlDeviceGetName(handle) == model
            assert pynvml.nvmlDeviceGetUUID(handle) == spec["uuid"]
            assert pynvml.nvmlDeviceGetIndex(handle) == index
            pci = pynvml.nvmlDeviceGetPciInfo(handle)
            assert pci.busId == spec["busId"]
            assert pci.pciDeviceId == spec["pciDeviceId"]
            v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            v1 = pynvml.nvmlDeviceGetMemoryInfo(handle)
            assert v2.total == v1.total == spec["memory"]["total"]
            assert v2.reserved == spec["memory"]["reserved"]
            assert v2.used == spec["memory"]["used"]
            # v1 counts what the driver reserves as used; free agrees between versions.
            assert v1.free == v2.free and v1.used == v2.used + v2.reserved
            assert active_links(handle) == links
    finally:
        pynvml.nvmlShutdown()


def test_unsupported_features_raise_pynvmls_not_supported(machine: Machine) -> None:
    machine("l4x4")
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetNvLinkState(handle, 0)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetMigMode(handle)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetRemappedRows(handle)
        assert pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle) == 0
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetHandleByIndex(4)
    finally:
        pynvml.nvmlShutdown()


def test_topology_levels_follow_the_pcie_paths(machine: Machine) -> None:
    machine("l4x4")
    pynvml.nvmlInit()
    try:
        h = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
        level = pynvml.nvmlDeviceGetTopologyCommonAncestor
        assert level(h[0], h[0]) == pynvml.NVML_TOPOLOGY_INTERNAL
        assert level(h[0], h[1]) == pynvml.NVML_TOPOLOGY_SINGLE
        assert level(h[0], h[2]) == pynvml.NVML_TOPOLOGY_SYSTEM
        status = pynvml.nvmlDeviceGetP2PStatus(h[0], h[1], pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
        assert status == pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
    finally:
        pynvml.nvmlShutdown()
    machine("hgx-a100-40gb")
    pynvml.nvmlInit()
    try:
        h = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
        level = pynvml.nvmlDeviceGetTopologyCommonAncestor
        assert level(h[0], h[1]) == pynvml.NVML_TOPOLOGY_MULTIPLE  # shared switch above both leaves
        assert level(h[0], h[2]) == pynvml.NVML_TOPOLOGY_NODE
        assert level(h[0], h[4]) == pynvml.NVML_TOPOLOGY_SYSTEM
        assert pynvml.nvmlDeviceGetP2PStatus(h[0], h[7], pynvml.NVML_P2P_CAPS_INDEX_NVLINK) == 0
        assert pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h[0], 0) == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
        assert pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h[0], 0).busId == "00000000:C4:00.0"
    finally:
        pynvml.nvmlShutdown()


def test_mig_devices_and_fabric_info(machine: Machine) -> None:
    machine("h100-mig")
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetMigMode(gpu) == [1, 1]
        assert pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7
        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
        assert pynvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1
        assert pynvml.nvmlDeviceGetName(mig) == "NVIDIA H100 NVL MIG 3g.47gb"
        assert pynvml.nvmlDeviceGetUUID(mig).startswith("MIG-")
        assert pynvml.nvmlDeviceGetGpuInstanceId(mig) == 2
        assert pynvml.nvmlDeviceGetAttributes(mig).gpuInstanceSliceCount == 3
        parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
        assert pynvml.nvmlDeviceGetUUID(parent) == pynvml.nvmlDeviceGetUUID(gpu)
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 5)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetUtilizationRates(gpu)  # no counters for the whole GPU in MIG mode
        assert pynvml.nvmlDeviceGetNvLinkRemotePciInfo(gpu, 0).busId == "00000000:52:00.0"
    finally:
        pynvml.nvmlShutdown()
    machine("gb200-nvl")
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(2)
        v3 = pynvml.c_nvmlGpuFabricInfo_v3_t()
        pynvml.nvmlDeviceGetGpuFabricInfoV(gpu, pynvml.byref(v3))
        assert bytes(v3.clusterUuid).hex() == "5b1e8f3c2a474d6e9c810f2b7a6d4e93"
        assert (v3.cliqueId, v3.state, v3.status, v3.healthSummary) == (32766, 3, 0, 1)
        v2 = pynvml.c_nvmlGpuFabricInfo_v2_t()
        pynvml.nvmlDeviceGetGpuFabricInfoV(gpu, pynvml.byref(v2))
        assert v2.cliqueId == 32766
        legacy = pynvml.c_nvmlGpuFabricInfo_t()
        pynvml.nvmlDeviceGetGpuFabricInfo(gpu, pynvml.byref(legacy))
        assert legacy.state == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
        wrong = pynvml.c_nvmlGpuFabricInfo_v2_t()
        wrong.version = 0x01000010
        with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
            pynvml.nvmlDeviceGetGpuFabricInfoV(gpu, pynvml.byref(wrong))
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetNvLinkRemotePciInfo(gpu, 0)  # switch trays are not on this node's PCIe
    finally:
        pynvml.nvmlShutdown()


def test_injected_errors_and_init_failures(machine: Machine) -> None:
    machine("degraded")
    pynvml.nvmlInit()
    try:
        lost = pynvml.nvmlDeviceGetHandleByIndex(2)
        with pytest.raises(pynvml.NVMLError_GpuIsLost) as raised:
            pynvml.nvmlDeviceGetUtilizationRates(lost)
        assert str(raised.value) == "GPU is lost"
        with pytest.raises(pynvml.NVMLError_Unknown):
            pynvml.nvmlDeviceGetTotalEccErrors(lost, 1, 0)
    finally:
        pynvml.nvmlShutdown()
    machine("no-driver")
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    machine("broken-links")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()


def test_calls_before_init_and_after_shutdown_are_uninitialized(machine: Machine) -> None:
    machine("l4x4")
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetName(handle)


def test_reinit_reads_the_fixture_named_at_that_time(machine: Machine) -> None:
    machine("l4x4")
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 4
    pynvml.nvmlInit()  # nested: same machine until the last shutdown
    machine("dgx-h100")
    assert pynvml.nvmlDeviceGetCount() == 4
    pynvml.nvmlShutdown()
    pynvml.nvmlShutdown()
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlDeviceGetCount() == 8
    finally:
        pynvml.nvmlShutdown()


def test_missing_machine_variable_means_no_driver(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine("l4x4")
    monkeypatch.delenv(fake_nvml.MACHINE_ENV)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_unknown_machine_is_a_clear_error() -> None:
    with pytest.raises(fake_nvml.FakeNvmlError, match="bundled machines: dgx-h100"):
        fake_nvml.machine_path("dgx-h200")


def test_build_is_cached_by_source_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fake_nvml.CACHE_ENV, str(tmp_path))
    first = fake_nvml.build()
    assert first.name == "libnvidia-ml.so.1" and first.parent.parent == tmp_path
    mtime = first.stat().st_mtime_ns
    assert fake_nvml.build() == first and first.stat().st_mtime_ns == mtime
    with pytest.raises(fake_nvml.FakeNvmlError, match="C compiler"):
        monkeypatch.setenv(fake_nvml.CACHE_ENV, str(tmp_path / "other"))
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        monkeypatch.delenv("CC", raising=False)
        fake_nvml.build()


def test_unmodified_pynvml_in_a_child_process_loads_the_fake() -> None:
    """No activate(): pynvml's own loader finds the fake through LD_LIBRARY_PATH."""
    code = (
        "import pynvml; pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(7); "
        "print(pynvml.nvmlDeviceGetCount(), pynvml.nvmlDeviceGetName(h)); pynvml.nvmlShutdown()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=fake_nvml.environment("dgx-h100"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "8 NVIDIA H100 80GB HBM3"
