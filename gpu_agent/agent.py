"""The agent loop: sample NVML, the kubelet and the caches; build the report; hand it to the publisher.

Cadence (all configurable, see :class:`AgentConfig`): GPUs and pods every ``interval`` seconds;
images and caches every ``inventory_interval`` seconds (a cache scan walks directories); disk
throughput at most every ``disk_probe_interval`` seconds. Each source fails on its own: an
unreachable kubelet socket leaves ``pods`` out, a CRI error leaves ``images`` out. An NVML read
error skips the cycle: no new report is made, so the last one written keeps its ``reportTime``
and ages, and the extender's freshness rule applies to it. The loop carries on regardless.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gpu_agent.inventory import CacheScan, DiskProbe, FsUsage, filesystem_usage, scan_caches
from gpu_agent.nvml_reader import NvmlReader, NvmlReadError, NvmlSample, NvmlUnavailable
from gpu_agent.publisher import Publisher
from gpu_agent.report import Bandwidth, Images, build_report

log = logging.getLogger(__name__)

NOT_OFFERED = "the kubelet does not offer this GPU (its device plugin reports it unhealthy or excludes it)"
"""A GPU the device plugin withdrew cannot be given to a pod: it is unhealthy for placement."""

DRIVER_UPGRADE_LABEL = "nvidia.com/gpu-driver-upgrade-state"
DRIVER_RELEASE_STATES = frozenset({"pod-deletion-required", "drain-required", "pod-restart-required"})
"""The GPU Operator's upgrade controller labels a node with its upgrade state; from pod deletion
until the new driver pod is up, every client must let go of the driver so that its kernel modules
can be unloaded. The agent closes NVML in these states (no report, its Lease lapses, the node is
cordoned anyway) and opens it again once the label moves on (validation, uncordon, done)."""


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    interval: float = 10.0
    inventory_interval: float = 60.0
    hf_cache: Path | None = None
    lora_dirs: tuple[Path, ...] = ()
    disk_probe_interval: float = 3600.0
    disk_probe_bytes: int = 256 * 1024 * 1024
    pull_bytes_per_second: float | None = None
    download_bytes_per_second: float | None = None
    host_root: Path = Path("/")  # where the host's filesystem is visible, for the runtime's image mount point


class PodSource(Protocol):
    def list(self) -> Sequence[Any]: ...
    def allocatable(self) -> dict[str, tuple[str, ...]]: ...


class ImageSource(Protocol):
    def list_images(self) -> Sequence[Any]: ...
    def image_fs_info(self) -> Sequence[Any]: ...


@dataclass
class AgentState:
    """What the metrics collector reads; replaced as a whole under the agent's lock."""

    node_name: str
    sample: NvmlSample | None = None
    report: dict[str, Any] | None = None
    cache_bytes: dict[str, int] = field(default_factory=dict)
    disk_read_bytes_per_second: float | None = None
    source_errors: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # inventory entries left out of the report, per list


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        reader: NvmlReader,
        *,
        pods: PodSource | None = None,
        images: ImageSource | None = None,
        publisher: Publisher | None = None,
        disk_probe: DiskProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.UTC),
    ) -> None:
        self.config = config
        self.reader = reader
        self.pods = pods
        self.images = images
        self.publisher = publisher
        self.clock = clock
        self.now = now
        roots = [p for p in (config.hf_cache, *config.lora_dirs) if p is not None]
        self.disk_probe = disk_probe or DiskProbe(
            roots, interval=config.disk_probe_interval, max_bytes=config.disk_probe_bytes, clock=clock
        )
        self.lock = threading.Lock()
        self.state = AgentState(node_name=config.node_name)
        self.started_at = time.time()  # wall clock: the report age counts from here until a first write
        self._caches: CacheScan | None = None
        self._images: Images | None = None
        self._image_fs: FsUsage | None = None
        self._model_fs: FsUsage | None = None
        self._inventory_at: float | None = None
        self._source_errors: dict[str, int] = {}
        self._down: set[str] = set()

    # ------------------------------------------------------------------ sources

    def _error(self, source: str, exc: BaseException) -> None:
        """Count a failed read; warn when a source goes down, not on every cycle it stays down."""
        self._source_errors[source] = self._source_errors.get(source, 0) + 1
        with self.lock:
            self.state = replace(self.state, source_errors=dict(self._source_errors))
        if source in self._down:
            log.debug("%s still unavailable: %s", source, exc)
        else:
            self._down.add(source)
            log.warning("%s unavailable: %s (its fields are left out until it answers again)", source, exc)

    def _ok(self, source: str) -> None:
        if source in self._down:
            self._down.discard(source)
            log.info("%s answers again", source)

    def _driver_upgrade(self) -> str | None:
        """The GPU Operator's upgrade state when it asks GPU clients to let go of the driver."""
        labels = self.publisher.node_labels if self.publisher is not None else {}
        state = labels.get(DRIVER_UPGRADE_LABEL, "")
        return state if state in DRIVER_RELEASE_STATES else None

    def _read_gpus(self) -> NvmlSample:
        upgrade = self._driver_upgrade()
        if upgrade is not None:
            if self.reader.is_open:
                log.warning("GPU driver upgrade (%s=%s): releasing NVML", DRIVER_UPGRADE_LABEL, upgrade)
                self.reader.close()
            with self.lock:
                self.state = replace(self.state, sample=None)
            raise NvmlReadError(f"NVML released for the GPU driver upgrade ({upgrade})")
        if not self.reader.is_open:
            try:
                self.reader.open()
            except NvmlUnavailable as exc:
                self._error("nvml", exc)
                raise NvmlReadError(str(exc)) from exc
            log.info("NVML opened again after the driver upgrade")
        try:
            sample = self.reader.read()
        except NvmlReadError as exc:
            # Per-GPU gauges must not keep their last value (a GPU that was healthy is not known
            # to be now): the sample goes, and the metrics show none until a read succeeds.
            with self.lock:
                self.state = replace(self.state, sample=None)
            self._error("nvml", exc)
            raise
        self._ok("nvml")
        return sample

    def _read_pods(
        self, sample: NvmlSample
    ) -> tuple[dict[int, tuple[str, ...]] | None, dict[str, tuple[str, ...]] | None, set[int] | None]:
        if self.pods is None:
            return None, None, None
        from gpu_agent.podresources.client import NodeGpus, describe_error, offered_gpus, pods_per_gpu

        names = NodeGpus(
            uuids={g.uuid: g.index for g in sample.gpus if g.uuid},
            mig_parents={m.uuid: g.index for g in sample.gpus for m in g.mig_instances},
            count=len(sample.gpus),
            minors={g.minor: g.index for g in sample.gpus if g.minor is not None},
            mig_profiles={m.uuid: m.profile for g in sample.gpus for m in g.mig_instances if m.profile},
        )
        try:
            assignments = self.pods.list()
        except Exception as exc:  # grpc.RpcError and socket errors: the kubelet is unreachable
            self._error("podresources", RuntimeError(describe_error(exc)))
            return None, None, None
        self._ok("podresources")
        grouped = pods_per_gpu(assignments, names)
        offered: set[int] | None
        try:
            allocatable = self.pods.allocatable()
            offered = offered_gpus(allocatable, names) if allocatable else None
        except Exception as exc:  # kubelets without GetAllocatableResources answer UNIMPLEMENTED
            log.debug("GetAllocatableResources: %s", describe_error(exc))
            offered = None
        return dict(grouped.by_gpu), dict(grouped.by_mig), offered

    def _refresh_inventory(self, now: float) -> None:
        if self._inventory_at is not None and now - self._inventory_at < self.config.inventory_interval:
            return
        self._inventory_at = now
        if self.images is not None:
            try:
                entries = list(self.images.list_images())
                total = sum({e.image_id: e.bytes for e in entries}.values())
                self._images = Images(entries=entries, total_bytes=total)
                self._ok("cri")
            except Exception as exc:  # grpc.RpcError: the runtime is unreachable
                from gpu_agent.podresources.client import describe_error

                self._error("cri", RuntimeError(describe_error(exc)))
                self._images = None
            self._image_fs = self._image_filesystem()
        hf_cache = self.config.hf_cache
        self._model_fs = filesystem_usage(hf_cache) if hf_cache is not None and hf_cache.is_dir() else None
        self._caches = scan_caches(self.config.hf_cache, self.config.lora_dirs)

    def _image_filesystem(self) -> FsUsage | None:
        """statvfs of the first image filesystem the runtime names, seen under ``host_root``."""
        assert self.images is not None
        try:
            filesystems = list(self.images.image_fs_info())
        except Exception as exc:  # grpc.RpcError: unreachable, or a runtime without ImageFsInfo
            from gpu_agent.podresources.client import describe_error

            log.debug("ImageFsInfo: %s", describe_error(exc))
            return None
        for fs in filesystems:
            usage = filesystem_usage(self.config.host_root / str(fs.mountpoint).lstrip("/"))
            if usage is not None:
                return usage
        return None

    # ------------------------------------------------------------------ one cycle

    def collect(self) -> dict[str, Any]:
        """Sample every source (each as often as its cadence allows) and build the report."""
        now = self.clock()
        sample = self._read_gpus()
        pods, mig_pods, offered = self._read_pods(sample)
        if offered is not None:
            sample = replace(
                sample,
                gpus=tuple(
                    g
                    if g.index in offered or g.mig_enabled or not g.healthy
                    else replace(g, healthy=False, health_reasons=(*g.health_reasons, NOT_OFFERED))
                    for g in sample.gpus
                ),
            )
        self._refresh_inventory(now)
        disk = self.disk_probe.sample()
        bandwidth = Bandwidth(
            disk_read_bytes_per_second=round(disk, 1) if disk is not None else None,
            pull_bytes_per_second=self.config.pull_bytes_per_second,
            download_bytes_per_second=self.config.download_bytes_per_second,
        )
        dropped: Counter[str] = Counter()
        report = build_report(
            self.config.node_name,
            sample,
            report_time=self.now(),
            pods=pods,
            mig_pods=mig_pods,
            images=self._images,
            caches=self._caches,
            bandwidth=bandwidth,
            image_filesystem=self._image_fs,
            model_cache=self._model_fs,
            dropped=dropped,
        )
        cache_bytes: dict[str, int] = {}
        if self._images is not None:
            cache_bytes["image"] = self._images.total_bytes
        if self._caches is not None and self._caches.models is not None:
            cache_bytes["model"] = self._caches.model_bytes
        if self._caches is not None and self._caches.lora_adapters is not None:
            cache_bytes["lora"] = self._caches.lora_bytes
        with self.lock:
            self.state = AgentState(
                node_name=self.config.node_name,
                sample=sample,
                report=report,
                cache_bytes=cache_bytes,
                disk_read_bytes_per_second=disk,
                source_errors=dict(self._source_errors),
                dropped=dict(dropped),
            )
        return report

    def run(self, stop: threading.Event) -> None:
        """Collect every ``interval`` and publish when due, until ``stop`` is set."""
        next_collect = self.clock()
        while not stop.is_set():
            now = self.clock()
            if now >= next_collect:
                try:
                    report = self.collect()
                except NvmlReadError as exc:
                    log.debug("no GPU sample this cycle: %s", exc)
                except Exception as exc:  # a bug in one cycle must not end the agent; the next cycle retries
                    log.exception("collecting the report failed")
                    with self.lock:  # the GPUs are not known this cycle: no per-GPU gauge keeps its last value
                        self.state = replace(self.state, sample=None)
                    self._error("agent", exc)
                else:
                    if self.publisher is not None:
                        self.publisher.offer(report)
                next_collect = now + self.config.interval
            if self.publisher is not None:
                self.publisher.publish_if_due()
            wait = next_collect - self.clock()
            if self.publisher is not None:
                due = self.publisher.due_in()
                if due is not None:
                    wait = min(wait, due)
            stop.wait(max(wait, 0.05))
