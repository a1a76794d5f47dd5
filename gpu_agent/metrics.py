"""Prometheus metrics of the agent, built fresh from the agent's latest state on every scrape.

All names start with ``gpusched_agent_``; values are in base units (bytes, seconds, ratios).
Labels are bounded: ``node``, ``gpu`` (index), ``uuid``, ``kind`` (cache kind, or NVML error
kind), ``result``.

=========================================== ======= ==============================================
gpusched_agent_gpu_memory_used_bytes        gauge   per GPU: total minus free, less driver-reserved memory
gpusched_agent_gpu_memory_total_bytes       gauge   per GPU, less driver-reserved memory
gpusched_agent_gpu_utilization_ratio        gauge   per GPU, 0..1 (absent in MIG mode)
gpusched_agent_gpu_healthy                  gauge   per GPU, 1 healthy, 0 not
gpusched_agent_gpu_nvlink_active_links      gauge   per GPU with NVLink
gpusched_agent_cache_bytes                  gauge   per kind: image, model, lora
gpusched_agent_disk_read_bytes_per_second   gauge   last measured disk read throughput
gpusched_agent_report_age_seconds           gauge   now minus reportTime of the last report the API accepted;
                                                    since the agent started while none was (exists from start)
gpusched_agent_lease_age_seconds            gauge   now minus the last Lease renewal the API accepted (same rule)
gpusched_agent_report_writes_total          counter by result: ok, error (both from start)
gpusched_agent_lease_renewals_total         counter by result: ok, error
gpusched_agent_report_bytes                 gauge   JSON bytes of the last report written
gpusched_agent_report_dropped_entries       gauge   per kind (images, models, loraAdapters): entries left out
                                                    of the last report by its bounds
gpusched_agent_nvml_errors_total            counter by kind (GpuIsLost, Unknown, ...); NotSupported is no error
gpusched_agent_source_errors_total          counter by kind: nvml, podresources, cri, agent
=========================================== ======= ==============================================

Per-GPU gauges disappear while NVML cannot be read, or a cycle fails for any other reason: they
never show a stale "healthy". The report and Lease ages and the write counters exist from the
agent's start, so an agent that never manages to write shows a growing age.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from gpu_agent.agent import Agent

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PREFIX = "gpusched_agent_"


def _parse_time(text: str) -> float | None:
    import datetime as _dt

    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class AgentCollector:
    """A prometheus_client collector over one :class:`Agent`."""

    def __init__(self, agent: Agent, wall_clock: Callable[[], float] = time.time) -> None:
        self.agent = agent
        self.wall_clock = wall_clock

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        agent = self.agent
        with agent.lock:
            state = agent.state
        node = state.node_name
        gpu_labels = ["node", "gpu", "uuid"]
        used = GaugeMetricFamily(
            PREFIX + "gpu_memory_used_bytes", "GPU memory in use (total minus free)", labels=gpu_labels
        )
        total = GaugeMetricFamily(PREFIX + "gpu_memory_total_bytes", "GPU memory in total", labels=gpu_labels)
        util = GaugeMetricFamily(PREFIX + "gpu_utilization_ratio", "GPU utilisation, 0..1", labels=gpu_labels)
        healthy = GaugeMetricFamily(PREFIX + "gpu_healthy", "1 when the GPU is healthy", labels=gpu_labels)
        links = GaugeMetricFamily(
            PREFIX + "gpu_nvlink_active_links", "Active NVLink links of the GPU", labels=gpu_labels
        )
        for gpu in state.sample.gpus if state.sample else ():
            labels = [node, str(gpu.index), gpu.uuid]
            if gpu.memory_used is not None:
                used.add_metric(labels, float(gpu.memory_used))
            if gpu.memory_total is not None:
                total.add_metric(labels, float(gpu.memory_total))
            if gpu.utilization is not None:
                util.add_metric(labels, gpu.utilization / 100.0)
            healthy.add_metric(labels, 1.0 if gpu.healthy else 0.0)
            if gpu.nvlink_links is not None:
                links.add_metric(labels, float(gpu.nvlink_links))
        yield from (used, total, util, healthy, links)

        cache = GaugeMetricFamily(PREFIX + "cache_bytes", "Bytes cached on the node by kind", labels=["node", "kind"])
        for kind, value in sorted(state.cache_bytes.items()):
            cache.add_metric([node, kind], float(value))
        yield cache

        disk = GaugeMetricFamily(
            PREFIX + "disk_read_bytes_per_second", "Last measured disk read throughput", labels=["node"]
        )
        if state.disk_read_bytes_per_second is not None:
            disk.add_metric([node], state.disk_read_bytes_per_second)
        yield disk

        age = GaugeMetricFamily(
            PREFIX + "report_age_seconds", "Seconds since the reportTime of the last report written", labels=["node"]
        )
        lease_age = GaugeMetricFamily(
            PREFIX + "lease_age_seconds", "Seconds since the last Lease renewal the API accepted", labels=["node"]
        )
        writes = CounterMetricFamily(PREFIX + "report_writes", "GPUNodeReport writes", labels=["node", "result"])
        renewals = CounterMetricFamily(PREFIX + "lease_renewals", "Lease renewals", labels=["node", "result"])
        size = GaugeMetricFamily(PREFIX + "report_bytes", "JSON bytes of the last report written", labels=["node"])
        publisher = agent.publisher
        now = self.wall_clock()
        if publisher is not None:
            stats = publisher.stats
            reported = _parse_time(stats.last_success_report_time) if stats.last_success_report_time else None
            # Never written: the age runs from the agent's start, so "never wrote" trips the alert.
            age.add_metric([node], max(now - (reported if reported is not None else agent.started_at), 0.0))
            renewed = stats.last_renew_at if stats.last_renew_at is not None else agent.started_at
            lease_age.add_metric([node], max(now - renewed, 0.0))
            writes.add_metric([node, "ok"], float(stats.writes_ok))
            writes.add_metric([node, "error"], float(stats.writes_failed))
            renewals.add_metric([node, "ok"], float(stats.renewals_ok))
            renewals.add_metric([node, "error"], float(stats.renewals_failed))
            if stats.last_report_bytes:
                size.add_metric([node], float(stats.last_report_bytes))
        yield from (age, lease_age, writes, renewals, size)
        dropped = GaugeMetricFamily(
            PREFIX + "report_dropped_entries",
            "Inventory entries left out of the last report by its bounds",
            labels=["node", "kind"],
        )
        for kind in ("images", "models", "loraAdapters"):
            dropped.add_metric([node, kind], float(state.dropped.get(kind, 0)))
        yield dropped

        nvml = CounterMetricFamily(PREFIX + "nvml_errors", "NVML errors by kind", labels=["node", "kind"])
        for kind, count in sorted(agent.reader.errors.items()):
            nvml.add_metric([node, kind], float(count))
        yield nvml

        sources = CounterMetricFamily(
            PREFIX + "source_errors",
            "Failed reads of a source (nvml, podresources, cri) and failed cycles (agent)",
            labels=["node", "kind"],
        )
        for kind, count in sorted(state.source_errors.items()):
            sources.add_metric([node, kind], float(count))
        yield sources


def registry_for(agent: Agent) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry


def serve(agent: Agent, port: int, address: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``address:port`` in a daemon thread; returns the server (``.shutdown()``)."""
    from prometheus_client import start_http_server

    result = start_http_server(port, addr=address, registry=registry_for(agent))
    return result[0] if isinstance(result, tuple) else result
