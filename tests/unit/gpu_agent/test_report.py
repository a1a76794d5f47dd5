"""The GPUNodeReport object: its shape, and that the extender's parser reads it as meant."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gpu_agent import fake_nvml
from gpu_agent.cri.client import ImageEntry
from gpu_agent.inventory import CacheScan, FsUsage, LoraEntry, ModelEntry
from gpu_agent.nvml_reader import NvmlReader, NvmlSample
from gpu_agent.report import Bandwidth, Images, build_report, dumps, material
from scheduler.core.objects import node_from_object, with_report

Machine = Callable[[str], Path]
CRD = Path(__file__).resolve().parents[3] / "manifests" / "crds" / "gpunodereports.yaml"
WHEN = _dt.datetime(2025, 3, 1, 12, 0, 5, 250000, tzinfo=_dt.UTC)


def sample_of(machine: Machine, name: str) -> NvmlSample:
    machine(name)
    with NvmlReader() as reader:
        return reader.read()


def full_report(sample: NvmlSample, node: str = "gpu-node-1") -> dict:
    return build_report(
        node,
        sample,
        report_time=WHEN,
        pods={0: ("team-a/train-0",), 1: ("team-a/train-0", "team-b/infer-1")},
        images=Images(
            entries=[ImageEntry("registry.example/llm:1", "sha256:ab", 15 * 10**9, "sha256:ab")],
            total_bytes=15 * 10**9,
        ),
        caches=CacheScan(
            models=(ModelEntry("meta-llama/Llama-3.1-8B@0e9e39f", 16 * 10**9),),
            lora_adapters=(LoraEntry("acme/sql-lora@1a2b", "meta-llama/Llama-3.1-8B", 10**8),),
            model_bytes=16 * 10**9,
            lora_bytes=10**8,
        ),
        bandwidth=Bandwidth(disk_read_bytes_per_second=2.5e9, pull_bytes_per_second=None),
        image_filesystem=FsUsage(free_bytes=300 * 10**9, total_bytes=500 * 10**9),
        model_cache=FsUsage(free_bytes=2 * 10**12, total_bytes=7 * 10**12),
    )


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def undeclared(value: object, schema: dict, path: str = "spec") -> list[str]:
    """Paths in ``value`` that the structural schema does not declare (the API would prune them)."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, item in value.items():
            if key not in props:
                out.append(f"{path}.{key}")
            else:
                out.extend(undeclared(item, props[key], f"{path}.{key}"))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out.extend(undeclared(item, schema["items"], f"{path}[{i}]"))
    return out


@pytest.mark.parametrize("name", fake_nvml.machines())
def test_every_machine_report_parses_in_the_extender(machine: Machine, name: str) -> None:
    sample = sample_of(machine, name)
    report = full_report(sample)
    node = node_from_object(
        {
            "metadata": {"name": "gpu-node-1", "labels": {}},
            "status": {
                "allocatable": {"nvidia.com/gpu": str(len(sample.gpus))},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    state = with_report(node, json.loads(dumps(report)), now=WHEN.timestamp() + 20)
    assert [g.index for g in state.gpus] == list(range(len(sample.gpus)))
    assert [g.uuid for g in state.gpus] == [g.uuid for g in sample.gpus]
    assert [g.model for g in state.gpus] == [g.model for g in sample.gpus]
    assert [g.memory for g in state.gpus] == [g.memory_total for g in sample.gpus]
    assert all(g.healthy for g in state.gpus)
    assert state.gpus[1].holders == ("team-a/train-0", "team-b/infer-1")
    assert state.links == sample.topology.matrix
    assert state.cuda == tuple(int(p) for p in sample.cuda_driver_version.split("."))  # type: ignore[union-attr]
    assert state.driver == sample.driver_version
    assert state.images["registry.example/llm:1"] == 15 * 10**9
    assert state.models == {"meta-llama/Llama-3.1-8B@0e9e39f": 16 * 10**9}
    assert state.lora_adapters == {"acme/sql-lora@1a2b": 10**8}
    assert state.disk_bytes_per_s == 2.5e9 and state.pull_bytes_per_s == 0.0
    # reportTime is written at second precision, so the age is 20.25 s.
    assert state.report_age_s == pytest.approx(20.25)
    assert undeclared(report["spec"], crd_schema()) == []


def test_report_shape(machine: Machine) -> None:
    report = full_report(sample_of(machine, "dgx-h100"))
    assert report["apiVersion"] == "gpusched.io/v1alpha1" and report["kind"] == "GPUNodeReport"
    assert report["metadata"] == {"name": "gpu-node-1"}
    spec = report["spec"]
    assert spec["nodeName"] == "gpu-node-1"
    assert spec["reportTime"] == "2025-03-01T12:00:05Z"
    assert spec["cudaDriverVersion"] == "12.4" and spec["driverVersion"] == "550.54.15"
    assert spec["gpuCount"] == 8 and len(spec["gpus"]) == 8
    gpu = spec["gpus"][0]
    assert set(gpu) == {
        "index",
        "uuid",
        "model",
        "memoryTotalBytes",
        "memoryUsedBytes",
        "utilizationPercent",
        "pciBusId",
        "healthy",
        "healthReasons",
        "migEnabled",
        "nvlinkActiveLinks",
        "pods",
    }
    assert spec["topology"]["matrix"][0] == ["", *["nvlink"] * 7]
    assert spec["topology"]["nvlinkCounts"][0] == [0, *[18] * 7]
    assert spec["topology"]["fabricClique"] == ""
    assert spec["bandwidth"] == {"diskReadBytesPerSecond": 2.5e9}
    assert spec["gpus"][5]["pods"] == []
    # GPUs 0 and 1 are held (pods above), the other six healthy and free: kubectl's FREE column.
    assert spec["freeGpus"] == 8 - 2


def test_free_gpus_leave_out_unhealthy_and_mig_gpus(machine: Machine) -> None:
    for name in ("h100-mig", "degraded"):
        spec = build_report("n", sample_of(machine, name), report_time=WHEN)["spec"]
        whole = [g for g in spec["gpus"] if g["healthy"] and not g.get("migEnabled")]
        assert spec["freeGpus"] == len(whole) < spec["gpuCount"], name


def test_unknown_sources_are_left_out(machine: Machine) -> None:
    sample = sample_of(machine, "h100-mig")
    spec = build_report("n", sample, report_time=WHEN)["spec"]
    assert not {"images", "models", "loraAdapters", "bandwidth"} & set(spec)
    assert all("pods" not in g for g in spec["gpus"])
    gpu0 = spec["gpus"][0]
    assert "utilizationPercent" not in gpu0 and gpu0["migEnabled"] is True
    assert [m["profile"] for m in gpu0["migInstances"]] == ["3g.47gb", "2g.24gb", "1g.12gb", "1g.12gb"]
    assert all("pods" not in m for m in gpu0["migInstances"])


def test_mig_pods_are_reported_per_instance(machine: Machine) -> None:
    sample = sample_of(machine, "h100-mig")
    mig = sample.gpus[0].mig_instances[2].uuid
    spec = build_report("n", sample, report_time=WHEN, pods={0: ("a/x",)}, mig_pods={mig: ("a/x",)})["spec"]
    instances = spec["gpus"][0]["migInstances"]
    assert [m["pods"] for m in instances] == [[], [], ["a/x"], []]
    assert spec["gpus"][0]["pods"] == ["a/x"] and spec["gpus"][1]["pods"] == []


def test_pcie_machine_matrix(machine: Machine) -> None:
    spec = build_report("n", sample_of(machine, "l4x4"), report_time=WHEN)["spec"]
    assert spec["topology"]["matrix"] == [
        ["", "PIX", "SYS", "SYS"],
        ["PIX", "", "SYS", "SYS"],
        ["SYS", "SYS", "", "PIX"],
        ["SYS", "SYS", "PIX", ""],
    ]
    assert all("nvlinkActiveLinks" not in g and "migEnabled" not in g for g in spec["gpus"])


def test_material_ignores_time_utilisation_used_memory_and_bandwidth(machine: Machine) -> None:
    sample = sample_of(machine, "dgx-h100")
    a = full_report(sample)
    b = json.loads(json.dumps(a))
    b["spec"]["reportTime"] = "2030-01-01T00:00:00Z"
    b["spec"]["gpus"][0]["utilizationPercent"] = 99
    b["spec"]["gpus"][0]["memoryUsedBytes"] = 1
    b["spec"]["bandwidth"] = {"diskReadBytesPerSecond": 1.0}
    b["spec"]["disk"]["modelCache"]["freeBytes"] -= 4096
    assert material(a) == material(b)
    b["spec"]["gpus"][3]["pods"] = ["ns/new"]
    assert material(a) != material(b)
    c = json.loads(json.dumps(a))
    c["spec"]["gpus"][2]["healthy"] = False
    assert material(a) != material(c)


@pytest.mark.parametrize(
    ("image_fs", "model_fs", "expected"),
    [
        (None, None, None),  # neither known: no disk section at all
        (FsUsage(1, 2), None, {"imageFilesystem": {"freeBytes": 1, "totalBytes": 2}}),
        (None, FsUsage(3, 4), {"modelCache": {"freeBytes": 3, "totalBytes": 4}}),
        (
            FsUsage(1, 2),
            FsUsage(3, 4),
            {"imageFilesystem": {"freeBytes": 1, "totalBytes": 2}, "modelCache": {"freeBytes": 3, "totalBytes": 4}},
        ),
    ],
)
def test_disk_figures(
    machine: Machine, image_fs: FsUsage | None, model_fs: FsUsage | None, expected: dict | None
) -> None:
    spec = build_report(
        "n", sample_of(machine, "l4x4"), report_time=WHEN, image_filesystem=image_fs, model_cache=model_fs
    )["spec"]
    assert spec.get("disk") == expected
    assert undeclared(spec, crd_schema()) == []
    disk_schema = crd_schema()["properties"]["disk"]["properties"]
    for part in ("imageFilesystem", "modelCache"):
        assert disk_schema[part]["required"] == ["freeBytes", "totalBytes"]
        assert {k: v["type"] for k, v in disk_schema[part]["properties"].items()} == {
            "freeBytes": "integer",
            "totalBytes": "integer",
        }


def test_dumps_without_orjson(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    report = full_report(sample_of(machine, "l4x4"))
    with_orjson = dumps(report)
    monkeypatch.setitem(sys.modules, "orjson", None)
    without = dumps(report)
    assert json.loads(without) == json.loads(with_orjson) == report
    assert "\n" not in dumps(report, pretty=False)


REAL_H200 = Path(__file__).resolve().parents[2] / "fixtures" / "nvml" / "real-h200-report.json"


def test_report_from_real_h200_parses_and_places() -> None:
    """The agent's report from a real NVIDIA H200 (driver 580.159.04, one GPU in a VM, no NVLink)."""
    from scheduler.core.podspec import parse_pod
    from scheduler.core.snapshot import ClusterSnapshot
    from scheduler.plugins import registry
    from tests.builders import node_object, pod

    report = json.loads(REAL_H200.read_text())
    assert undeclared(report["spec"], crd_schema()) == []
    node = with_report(node_from_object(node_object("vm", gpus=1)), report, now=WHEN.timestamp())
    assert node.cuda == (13, 0) and node.driver == "580.159.04"
    assert [(g.model, g.memory) for g in node.gpus] == [("NVIDIA H200", 150754820096)]
    assert node.links == (("",),)
    snap = ClusterSnapshot([node])
    framework = registry.build(registry.config_from(None))
    fits = parse_pod(pod("big", 1, {"gpusched.io/gpu-memory": "130Gi", "gpusched.io/cuda": "12.4"}))
    too_big = parse_pod(pod("bigger", 1, {"gpusched.io/gpu-memory": "141Gi"}))
    assert framework.decide(snap, fits).feasible.tolist() == [0]
    assert framework.decide(snap, too_big).feasible.size == 0


@pytest.mark.parametrize(
    ("images", "models", "adapters", "kept", "dropped"),
    [
        # 3,900 images used to make a 1.5 MiB report: now 500 are kept, the largest
        (3900, 0, 0, {"images": 500}, {"images": 3400}),
        # a tenant-written adapter_config.json with a 100 kB baseModel: that adapter is dropped, not cut
        (0, 0, 1, {"loraAdapters": 0}, {"loraAdapters": 1}),
        (10, 300, 0, {"images": 10, "models": 200}, {"models": 100}),
    ],
)
def test_report_is_bounded(
    machine: Machine, images: int, models: int, adapters: int, kept: dict[str, int], dropped: dict[str, int]
) -> None:
    """Finding 8: a bounded report, largest entries first, what was dropped counted."""
    from collections import Counter

    from gpu_agent.report import MAX_REPORT_BYTES, size

    counter: Counter[str] = Counter()
    report = build_report(
        "n",
        sample_of(machine, "dgx-h100"),
        report_time=WHEN,
        images=Images([ImageEntry(f"registry.example/img-{i}:1", "sha256:x", i, str(i)) for i in range(images)]),
        caches=CacheScan(
            models=tuple(ModelEntry(f"org/m-{i}@main", i) for i in range(models)),
            lora_adapters=tuple(LoraEntry(f"a-{i}", "x" * 100_000, 1) for i in range(adapters)),
        ),
        dropped=counter,
    )
    spec = report["spec"]
    assert {k: len(spec[k]) for k in kept} == kept
    assert dict(counter) == dropped
    assert size(report) <= MAX_REPORT_BYTES and len(spec["gpus"]) == 8
    if images > 500:
        assert min(e["bytes"] for e in spec["images"]) == images - 500  # the largest were kept


def test_whole_report_fits_its_byte_bound_dropping_the_smallest(machine: Machine) -> None:
    from collections import Counter

    from gpu_agent.report import size

    counter: Counter[str] = Counter()
    long = "y" * 500
    report = build_report(
        "n",
        sample_of(machine, "l4x4"),
        report_time=WHEN,
        images=Images([ImageEntry(f"{i:04d}{long}"[:500], long, i, str(i)) for i in range(400)]),
        dropped=counter,
        max_bytes=100_000,
    )
    assert size(report) <= 100_000 and report["spec"]["gpus"]
    assert counter["images"] == 400 - len(report["spec"]["images"]) > 0
    assert min(e["bytes"] for e in report["spec"]["images"]) == counter["images"]
