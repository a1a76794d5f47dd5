"""The agent's Prometheus collector, read back with prometheus_client's own text parser."""

from __future__ import annotations

import datetime as _dt
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpu_agent.agent import Agent, AgentConfig
from gpu_agent.metrics import AgentCollector, registry_for
from gpu_agent.nvml_reader import NvmlReader
from gpu_agent.publisher import MemorySink, Publisher

Machine = Callable[[str], Path]
NOW = _dt.datetime(2025, 5, 1, 8, 0, 0, tzinfo=_dt.UTC)


def samples(agent: Agent, wall: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent, wall_clock=lambda: wall))
    text = generate_latest(registry).decode()
    assert generate_latest(registry_for(agent)).decode().count("gpusched_agent_gpu_healthy{") == len(
        agent.state.sample.gpus if agent.state.sample else ()
    )
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_metrics_from_a_collected_report(machine: Machine, tmp_path: Path) -> None:
    machine("degraded")
    reader = NvmlReader()
    reader.open()
    try:
        publisher = Publisher(MemorySink(), heartbeat=30, min_interval=0)
        agent = Agent(
            AgentConfig(node_name="gpu-7", disk_probe_bytes=0, hf_cache=tmp_path / "none"),
            reader,
            publisher=publisher,
            now=lambda: NOW,
        )
        publisher.offer(agent.collect())
        publisher.publish_if_due()
        got = samples(agent, wall=NOW.timestamp() + 42)
    finally:
        reader.close()
    total = {labels["gpu"]: value for labels, value in got["gpusched_agent_gpu_memory_total_bytes"]}
    usable = (81559 - 530) * 2**20  # the driver reserves 530 MiB
    assert total == {"0": usable, "1": usable, "3": usable}  # GPU 2 is lost
    used = {labels["gpu"]: value for labels, value in got["gpusched_agent_gpu_memory_used_bytes"]}
    assert used == {"0": 0, "1": 0, "3": 0}
    util = {labels["gpu"]: value for labels, value in got["gpusched_agent_gpu_utilization_ratio"]}
    assert util == {"0": 0.05, "1": 0.05, "3": 0.05}
    healthy = {labels["gpu"]: value for labels, value in got["gpusched_agent_gpu_healthy"]}
    assert healthy == {"0": 0.0, "1": 0.0, "2": 0.0, "3": 0.0}
    links = {labels["gpu"]: value for labels, value in got["gpusched_agent_gpu_nvlink_active_links"]}
    assert links == {"0": 18.0, "1": 18.0, "3": 18.0}
    first_labels = got["gpusched_agent_gpu_memory_total_bytes"][0][0]
    assert first_labels["node"] == "gpu-7" and first_labels["uuid"].startswith("GPU-")
    assert got["gpusched_agent_report_age_seconds"] == [({"node": "gpu-7"}, 42.0)]
    writes = {labels["result"]: value for labels, value in got["gpusched_agent_report_writes_total"]}
    assert writes == {"ok": 1.0, "error": 0.0}
    errors = {labels["kind"]: value for labels, value in got["gpusched_agent_nvml_errors_total"]}
    assert errors["Unknown"] == 1.0 and errors["GpuIsLost"] > 0
    assert "gpusched_agent_cache_bytes" not in got  # no cache configured: nothing to say
    assert all(name.startswith("gpusched_agent_") for name in got)


def test_cache_bytes_and_no_publisher(machine: Machine, tmp_path: Path) -> None:
    machine("l4x4")
    lora = tmp_path / "lora" / "a"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text('{"base_model_name_or_path": "m"}')
    (lora / "w.bin").write_bytes(b"x" * 1000)
    reader = NvmlReader()
    reader.open()
    try:
        agent = Agent(
            AgentConfig(node_name="n", lora_dirs=(tmp_path / "lora",), disk_probe_bytes=0, hf_cache=tmp_path / "hub"),
            reader,
        )
        agent.collect()
        got = samples(agent, wall=0)
    finally:
        reader.close()
    assert got["gpusched_agent_cache_bytes"] == [({"node": "n", "kind": "lora"}, 1000.0 + 32)]
    assert "gpusched_agent_report_age_seconds" not in got and "gpusched_agent_report_writes_total" not in got
    assert len(got["gpusched_agent_gpu_healthy"]) == 4


def test_signals_exist_from_start_and_gpu_gauges_clear_on_failure(machine: Machine, tmp_path: Path) -> None:
    """Finding 11: an agent that never manages to write must show a growing report age (so the
    stale alert fires), and a failed NVML read must not leave gpu_healthy at its last value."""
    from gpu_agent.nvml_reader import NvmlReadError

    machine("l4x4")
    reader = NvmlReader()
    reader.open()
    sink = MemorySink(node_uids={"n": "uid-n"})
    sink.down = True  # RBAC, CRD or admission refuses every write
    try:
        publisher = Publisher(sink, heartbeat=30, min_interval=0)
        agent = Agent(
            AgentConfig(node_name="n", disk_probe_bytes=0, hf_cache=tmp_path / "hub"), reader, publisher=publisher
        )
        started = agent.started_at
        publisher.offer(agent.collect())
        publisher.publish_if_due()
        got = samples(agent, wall=started + 600)
        assert got["gpusched_agent_report_age_seconds"] == [({"node": "n"}, 600.0)]
        assert got["gpusched_agent_lease_age_seconds"] == [({"node": "n"}, 600.0)]
        writes = {labels["result"]: value for labels, value in got["gpusched_agent_report_writes_total"]}
        assert writes == {"ok": 0.0, "error": 1.0}
        assert len(got["gpusched_agent_gpu_healthy"]) == 4
        broken = tmp_path / "broken.json"
        spec = json.loads(machine("l4x4").read_text())
        broken.write_text(json.dumps({**spec, "errors": {"nvmlDeviceGetCount_v2": 999}}))
        machine(str(broken))
        reader.reopen()  # the driver now fails every enumeration
        with pytest.raises(NvmlReadError):
            agent.collect()
        got = samples(agent, wall=started + 610)
        assert "gpusched_agent_gpu_healthy" not in got  # no stale "healthy"
    finally:
        reader.close()


class BreakingPods:
    """A kubelet whose PodResources answer turns unreadable after the first cycle, and which ends the
    agent's loop when it does (so the loop runs exactly one failing cycle)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.calls = 0

    def list(self) -> list[object]:
        self.calls += 1
        if self.calls == 1:
            return []
        self.stop.set()
        return [object()]  # no device_id: grouping it fails inside the cycle

    def allocatable(self) -> dict[str, tuple[str, ...]]:
        return {}


def test_a_failed_cycle_clears_the_gpu_gauges(machine: Machine, tmp_path: Path) -> None:
    """Any failure inside a cycle (not only NVML's) leaves the GPUs unknown: gpu_healthy must not
    keep reporting the last cycle's 1."""
    machine("l4x4")
    reader = NvmlReader()
    reader.open()
    stop = threading.Event()
    try:
        agent = Agent(
            AgentConfig(node_name="n", disk_probe_bytes=0, hf_cache=tmp_path / "hub", interval=0.01),
            reader,
            pods=BreakingPods(stop),
        )
        agent.collect()
        healthy = samples(agent, wall=0)["gpusched_agent_gpu_healthy"]
        assert [value for _, value in healthy] == [1.0, 1.0, 1.0, 1.0]
        agent.run(stop)  # one cycle, which fails
        got = samples(agent, wall=0)
    finally:
        reader.close()
    assert "gpusched_agent_gpu_healthy" not in got
    assert {labels["kind"]: value for labels, value in got["gpusched_agent_source_errors_total"]} == {"agent": 1.0}
