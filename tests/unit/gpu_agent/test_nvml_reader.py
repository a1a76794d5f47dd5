"""NvmlReader over the fake NVML: every machine, and every defined error outcome."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest

from gpu_agent.nvml_reader import (
    NvmlReader,
    NvmlReadError,
    NvmlSample,
    NvmlUnavailable,
    cuda_version_text,
    normalize_bus_id,
)

Machine = Callable[[str], Path]

CASES = {
    # machine: (GPUs, model, CUDA, pair kinds seen, NVLink count of pair (0, 1), clique)
    "dgx-h100": (8, "NVIDIA H100 80GB HBM3", "12.4", {"nvlink"}, 18, ""),
    "hgx-a100-40gb": (8, "NVIDIA A100-SXM4-40GB", "12.2", {"nvlink"}, 12, ""),
    "l4x4": (4, "NVIDIA L4", "12.4", {"PIX", "SYS"}, 0, ""),
    "h100-mig": (2, "NVIDIA H100 NVL", "12.4", {"nvlink"}, 12, ""),
    "gb200-nvl": (4, "NVIDIA GB200", "12.8", {"nvlink"}, 18, "5b1e8f3c-2a47-4d6e-9c81-0f2b7a6d4e93.32766"),
}


def read(machine: Machine, name: str) -> tuple[NvmlSample, NvmlReader]:
    machine(name)
    with NvmlReader() as reader:
        return reader.read(), reader


@pytest.mark.parametrize("name", sorted(CASES))
def test_reads_every_machine(machine: Machine, name: str) -> None:
    count, model, cuda, kinds, pair01, clique = CASES[name]
    sample, reader = read(machine, name)
    assert len(sample.gpus) == count
    assert [g.index for g in sample.gpus] == list(range(count))
    assert {g.model for g in sample.gpus} == {model}
    assert sample.cuda_driver_version == cuda
    assert all(g.uuid.startswith("GPU-") and g.pci_bus_id and g.healthy for g in sample.gpus)
    assert all(g.memory_total and g.memory_used is not None for g in sample.gpus)
    topo = sample.topology
    assert len(topo.matrix) == count and all(len(row) == count for row in topo.matrix)
    assert all(topo.matrix[i][i] == "" and topo.nvlink_counts[i][i] == 0 for i in range(count))
    assert {topo.matrix[a][b] for a in range(count) for b in range(count) if a != b} == kinds
    assert topo.matrix == tuple(zip(*topo.matrix, strict=True))  # symmetric
    assert topo.nvlink_counts[0][1] == pair01
    assert topo.fabric_clique == clique
    assert not reader.errors


def test_dgx_h100_reports_nvswitch_links_and_memory(machine: Machine) -> None:
    sample, _ = read(machine, "dgx-h100")
    assert all(g.nvlink_links == 18 for g in sample.gpus)
    assert all(c == 18 for row in sample.topology.nvlink_counts for c in row if c)
    gpu = sample.gpus[4]
    # 81559 MiB less the 530 MiB the driver reserves; used excludes the reserved part as well
    assert gpu.memory_total == (81559 - 530) * 2**20
    assert gpu.memory_used == 71 * 2**30
    assert gpu.utilization == 97
    assert gpu.mig_enabled is False and gpu.mig_instances == ()
    assert sample.driver_version == "550.54.15"


def test_pcie_only_machine_has_levels_and_no_nvlink(machine: Machine) -> None:
    sample, _ = read(machine, "l4x4")
    m = sample.topology.matrix
    assert (m[0][1], m[2][3], m[0][2], m[1][3]) == ("PIX", "PIX", "SYS", "SYS")
    assert all(g.nvlink_links is None and g.mig_enabled is None for g in sample.gpus)


def test_mig_instances_and_missing_utilisation(machine: Machine) -> None:
    sample, reader = read(machine, "h100-mig")
    gpu0, gpu1 = sample.gpus
    assert gpu0.mig_enabled is True and gpu1.mig_enabled is False
    assert gpu0.utilization is None  # NotSupported in MIG mode: absent, not an error
    assert gpu1.utilization == 0
    assert [m.profile for m in gpu0.mig_instances] == ["3g.47gb", "2g.24gb", "1g.12gb", "1g.12gb"]
    assert [m.gpu_instance_id for m in gpu0.mig_instances] == [2, 3, 9, 10]
    assert all(m.uuid.startswith("MIG-") and m.memory_bytes for m in gpu0.mig_instances)
    assert sample.topology.matrix[0][1] == "nvlink"  # the NVLink bridge: direct links found by remote bus id
    assert not reader.errors


def test_degraded_gpus_get_health_reasons(machine: Machine) -> None:
    sample, reader = read(machine, "degraded")
    ecc, remap, lost, fabric = sample.gpus
    assert not ecc.healthy
    assert "2 uncorrectable ECC errors since the driver loaded" in ecc.health_reasons
    assert any(r.startswith("warning: row remapping pending") for r in ecc.health_reasons)
    assert not remap.healthy and remap.health_reasons == ("row remapping failed (no spare rows left)",)
    assert not lost.healthy and "GPU is lost (fell off the bus)" in lost.health_reasons
    assert lost.utilization is None and lost.memory_total is None and lost.nvlink_links is None
    assert lost.uuid  # what still answers is still reported
    assert not fabric.healthy and fabric.health_reasons == ("NVLink fabric registration not complete (state 2)",)
    assert reader.errors["GpuIsLost"] > 0 and reader.errors["Unknown"] == 1
    # The lost GPU is not asked about pairs: its relation to the others is unknown ("").
    assert sample.topology.matrix[2][0] == "" and sample.topology.matrix[0][1] == "nvlink"


def test_warnings_alone_keep_a_gpu_healthy(machine: Machine, tmp_path: Path) -> None:
    fixture = tmp_path / "pending.json"
    fixture.write_text(
        '{"driverVersion": "1", "gpus": [{"name": "G", "uuid": "GPU-1", "busId": "00000000:01:00.0",'
        ' "remappedRows": {"pending": 1}, "retiredPages": {"pending": 1}}]}'
    )
    machine(str(fixture))
    with NvmlReader() as reader:
        (gpu,) = reader.read().gpus
    assert gpu.healthy
    assert len(gpu.health_reasons) == 2 and all(r.startswith("warning: ") for r in gpu.health_reasons)


def test_old_driver_falls_back_to_older_entry_points(machine: Machine) -> None:
    sample, reader = read(machine, "old-driver")
    assert sample.cuda_driver_version == "11.4"  # from nvmlSystemGetCudaDriverVersion
    gpu = sample.gpus[0]
    assert gpu.memory_total == 40536 * 2**20 and gpu.memory_used == 2048 * 2**20  # v1 memory info
    assert sample.topology.fabric_clique == ""
    assert sample.topology.matrix[0][1] == "SYS"
    assert not reader.errors  # FunctionNotFound: the field is absent, not an error


def test_symbol_missing_from_the_library_is_function_not_found(machine: Machine) -> None:
    """A pynvml wrapper whose C symbol the library lacks: pynvml raises FunctionNotFound itself."""
    machine("gb200-nvl")
    with NvmlReader() as reader:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        v4 = pynvml.c_nvmlGpuFabricInfo_v4_t()
        assert reader._call("nvmlDeviceGetGpuFabricInfo_v4", handle, pynvml.byref(v4)) is None
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetGpuFabricInfo_v4(handle, pynvml.byref(v4))
    assert not reader.errors


def test_an_older_nvidia_ml_py_without_some_wrappers(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrappers a release of nvidia-ml-py lacks are fields left out, as if the driver lacked them."""
    for name in (
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetGpuFabricInfoV",
        "nvmlDeviceGetNvLinkRemoteDeviceType",
        "nvmlMemory_v2",
    ):
        monkeypatch.delattr(pynvml, name)
    sample, reader = read(machine, "gb200-nvl")
    assert sample.cuda_driver_version == "12.8"
    assert sample.topology.fabric_clique == "5b1e8f3c-2a47-4d6e-9c81-0f2b7a6d4e93.32766"  # legacy fabric call
    # Without remote device types or remote PCI info, the NVLink P2P status decides the pairs.
    assert sample.topology.nvlink_counts[0][1] == 18 and sample.gpus[0].nvlink_links == 18
    assert sample.gpus[0].memory_total == 189471 * 2**20
    assert not reader.errors


def test_no_driver_is_unavailable(machine: Machine) -> None:
    machine("no-driver")
    with pytest.raises(NvmlUnavailable, match="driver not loaded"):
        NvmlReader().open()


def test_no_library_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", missing)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    with pytest.raises(NvmlUnavailable, match=r"libnvidia-ml\.so\.1 not found.*--fake-nvml"):
        NvmlReader().open()


def test_failed_device_count_is_a_read_error(machine: Machine, tmp_path: Path) -> None:
    fixture = tmp_path / "count.json"
    fixture.write_text('{"errors": {"nvmlDeviceGetCount_v2": 999}, "gpus": []}')
    machine(str(fixture))
    with NvmlReader() as reader:
        with pytest.raises(NvmlReadError, match="Unknown"):
            reader.read()
        assert reader.errors == {"Unknown": 1}


def test_lost_handle_still_lists_the_gpu(machine: Machine, tmp_path: Path) -> None:
    fixture = tmp_path / "handle.json"
    fixture.write_text(
        '{"gpus": [{"name": "G", "uuid": "GPU-1", "busId": "00000000:01:00.0"},'
        ' {"name": "G", "uuid": "GPU-2", "busId": "00000000:02:00.0",'
        ' "errors": {"nvmlDeviceGetHandleByIndex_v2": 15}}]}'
    )
    machine(str(fixture))
    with NvmlReader() as reader:
        sample = reader.read()
    assert [g.healthy for g in sample.gpus] == [True, False]
    assert sample.gpus[1].health_reasons == ("GPU is lost (fell off the bus)",)
    assert sample.topology.matrix[0][1] == ""


@pytest.mark.parametrize(
    ("value", "text"), [(12040, "12.4"), (12080, "12.8"), (11040, "11.4"), (13000, "13.0"), (12090, "12.9")]
)
def test_cuda_version_text(value: int, text: str) -> None:
    assert cuda_version_text(value) == text


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("00000000:18:00.0", (0, 0x18, 0, 0)),
        ("0000:18:00.0", (0, 0x18, 0, 0)),
        (b"00000008:01:00.1", (8, 1, 0, 1)),
        ("garbage", None),
    ],
)
def test_normalize_bus_id(text: str | bytes, parsed: tuple[int, int, int, int] | None) -> None:
    assert normalize_bus_id(text) == parsed


# ---------------------------------------------------------------------- health attribution (issue findings 1-3)

HEALTH_CASES = {
    # fixture: (healthy per GPU, {GPU: a reason it must carry})
    # Finding 1: the last GPU is lost; pairwise calls with it must not mark the other seven.
    "lost-last": ([True] * 7 + [False], {7: "GPU is lost (fell off the bus)"}),
    # Finding 2: 999 on every query of GPU 1; a timeout on GPU 2's UUID (its pods cannot be matched).
    "unanswering": (
        [True, False, False, True],
        {
            1: "NVML nvmlDeviceGetUUID failed: Unknown",
            2: "NVML gave no UUID for this GPU (its pods cannot be matched to it)",
        },
    ),
    # Finding 3: Xid 79, 94 and 119 mark their GPU; Xid 13 is the application's fault.
    "xid": (
        [False, False, False, True],
        {
            0: "Xid 79: GPU has fallen off the bus (until the GPU is reset)",
            1: "Xid 94: contained ECC error (until the GPU is reset)",
            2: "Xid 119: GSP RPC timeout (until the GPU is reset)",
        },
    ),
}


@pytest.mark.parametrize("name", sorted(HEALTH_CASES))
def test_health_is_attributed_to_the_gpu_that_fails(machine: Machine, name: str) -> None:
    healthy, reasons = HEALTH_CASES[name]
    sample, _ = read(machine, name)
    assert [g.healthy for g in sample.gpus] == healthy, [g.health_reasons for g in sample.gpus]
    for index, reason in reasons.items():
        assert reason in sample.gpus[index].health_reasons
    for gpu in sample.gpus:
        if gpu.healthy:
            assert all(r.startswith("warning: ") for r in gpu.health_reasons), gpu


def test_timeout_reason_names_the_call(machine: Machine) -> None:
    sample, reader = read(machine, "unanswering")
    assert "NVML nvmlDeviceGetUtilizationRates failed: Timeout" in sample.gpus[2].health_reasons
    assert reader.errors["Timeout"] >= 2 and reader.errors["Unknown"] > 0


def test_lost_gpu_keeps_the_others_topology(machine: Machine) -> None:
    sample, _ = read(machine, "lost-last")
    matrix = sample.topology.matrix
    assert all(matrix[a][b] == "nvlink" for a in range(7) for b in range(7) if a != b)
    assert all(matrix[7][b] == "" for b in range(8))


def test_xid_marks_last_until_nvml_is_opened_again(machine: Machine, tmp_path: Path) -> None:
    import json

    fixture = machine("xid")
    cleared = tmp_path / "cleared.json"
    spec = json.loads(fixture.read_text())
    for gpu in spec["gpus"]:
        gpu.pop("xids", None)
    cleared.write_text(json.dumps(spec))
    with NvmlReader() as reader:
        assert [g.healthy for g in reader.read().gpus] == [False, False, False, True]
        # events are delivered once; the mark stays on later reads
        assert [g.healthy for g in reader.read().gpus] == [False, False, False, True]
        machine(str(cleared))  # the GPUs were reset: the driver raises nothing new
        reader.reopen()
        assert all(g.healthy for g in reader.read().gpus)


@pytest.mark.parametrize("code", [1, 9, 18, 999])  # Uninitialized, DriverNotLoaded, LibRmVersionMismatch, Unknown
def test_reader_reopens_nvml_after_the_driver_went_away(machine: Machine, tmp_path: Path, code: int) -> None:
    """Finding 10: a driver reload used to leave the agent failing forever."""
    import json

    spec = json.loads(machine("l4x4").read_text())
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({**spec, "errors": {"nvmlDeviceGetCount_v2": code}}))
    back = tmp_path / "back.json"
    back.write_text(json.dumps(spec))
    machine(str(gone))
    with NvmlReader() as reader:
        with pytest.raises(NvmlReadError):
            reader.read()
        machine(str(back))  # the new driver is loaded
        assert len(reader.read().gpus) == 4
        assert reader.opened == 2
