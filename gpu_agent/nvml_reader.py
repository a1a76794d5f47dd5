"""Read a node's GPUs, interconnect and driver through NVML (pynvml from nvidia-ml-py).

Every NVML outcome is defined:

- no library, or no driver, at start -> :class:`NvmlUnavailable` with a message saying which; the
  CLI prints it and exits non-zero.
- ``NotSupported``, ``FunctionNotFound`` (an older driver), ``NotFound``, ``InvalidArgument`` for
  an optional query -> that field is absent from the sample, nothing else changes.
- any other error of a query of one GPU (``GpuIsLost``, ``ResetRequired``, ``Unknown`` (999),
  ``Timeout``, ...) -> the GPU is reported unhealthy with the reason (the call and the error),
  that field is absent, its other fields are read where they still answer, and the error is
  counted in :attr:`NvmlReader.errors` (by kind) for ``gpusched_agent_nvml_errors_total``. A GPU
  without a UUID is unhealthy too: its pods cannot be matched to it.
- pairwise queries (P2P status, common ancestor) are not asked of a GPU whose own queries
  failed; when one fails anyway, each GPU of the pair is asked for its PCI info and only the one
  that fails is marked, never the other.
- Xid errors: the reader registers every GPU for NVML's critical-Xid events when it opens and
  drains them on each read. An Xid other than the application errors (13, 31, 43, 45, 68, 109,
  as NVIDIA's device plugin treats them) marks the GPU unhealthy, naming the Xid, until NVML is
  opened again (a driver reload or GPU reset; :meth:`NvmlReader.reopen`).
- an error of a system-wide query (device count) while reading -> :class:`NvmlReadError`; the
  agent makes no report that cycle (the last one ages) and tries again on the next. Errors that
  mean the driver went away (``Uninitialized``, ``DriverNotLoaded``, ``LibRmVersionMismatch``,
  ``Unknown``) make the next read shut NVML down and initialise it again first, so a reloaded
  driver is picked up without restarting the agent.

``memoryTotalBytes`` is what processes can allocate: the v2 memory query's total less the memory
the driver reserves; the v1 query (older drivers) cannot tell them apart.

Topology: per active NVLink link, its remote end (PCI bus id, or the remote device type when the
far end is an NVSwitch). Links whose remote bus id is another local GPU count towards that pair;
GPUs that both reach NVSwitches count ``min(links of a, links of b)`` for the pair when NVML says
they can talk over NVLink (P2P status), as ``nvidia-smi topo -m`` shows NV18 on a DGX H100.
Pairs without NVLink get the PCIe common-ancestor level: PIX, PXB, PHB, NODE or SYS; a level
NVML cannot give stays ``""``. The fabric clique (multi-node NVLink domain) is
``<clusterUuid>.<cliqueId>`` from ``nvmlDeviceGetGpuFabricInfoV``, as GPU Feature Discovery
writes the ``nvidia.com/gpu.clique`` label.

Only the standard library and pynvml are imported here.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as _uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

TOPOLOGY_LEVELS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
"""nvmlGpuTopologyLevel_t -> the names nvidia-smi topo uses. INTERNAL (two GPUs on one board)
counts as PIX, the closest PCIe relation there is."""

# Errors that mean "this driver or GPU does not have it": the field is left out, not counted.
ABSENT = ("NotSupported", "FunctionNotFound", "NotFound", "InvalidArgument", "ArgumentVersionMismatch")
# Errors with a reason of their own; any other failing query reads "NVML <call> failed: <kind>".
FATAL_GPU = {"GpuIsLost": "GPU is lost (fell off the bus)", "ResetRequired": "GPU requires a reset"}
QUERY_FAILED = "NVML "
# Errors of a system-wide query that mean the driver went away (unloaded, reloaded, upgraded).
DRIVER_GONE = ("Uninitialized", "DriverNotLoaded", "LibRmVersionMismatch", "Unknown")
NO_UUID = "NVML gave no UUID for this GPU (its pods cannot be matched to it)"

XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
"""Xids caused by the application, not the GPU: NVIDIA's device plugin skips these too."""
XID_TEXT = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}

WARNING = "warning: "
"""Health reasons that start with this do not make the GPU unhealthy (a reset is due, say)."""

FABRIC_STATE_COMPLETED = 3
FABRIC_HEALTH_UNHEALTHY = 2
FABRIC_HEALTH_LIMITED = 3
NVLINK_DEVICE_TYPE_SWITCH = 2
NVLINK_DEVICE_TYPE_GPU = 0


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used at all on this machine (no library, no driver, no permission)."""


class NvmlReadError(RuntimeError):
    """A system-wide NVML query failed while reading; the sample is incomplete."""


@dataclass(frozen=True)
class MigInstance:
    uuid: str
    profile: str = ""
    memory_bytes: int | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True)
class GpuSample:
    index: int
    uuid: str = ""
    model: str = ""
    memory_total: int | None = None  # less what the driver reserves, where NVML tells it
    memory_used: int | None = None  # total - free, less the driver's reserve where NVML tells it
    utilization: int | None = None
    pci_bus_id: str = ""
    healthy: bool = True
    health_reasons: tuple[str, ...] = ()
    mig_enabled: bool | None = None
    mig_instances: tuple[MigInstance, ...] = ()
    nvlink_links: int | None = None  # active NVLink links; None when the GPU has no NVLink
    minor: int | None = None  # N of /dev/nvidiaN (DRA names the GPU gpu-N); None when unknown


@dataclass(frozen=True)
class Topology:
    matrix: tuple[tuple[str, ...], ...] = ()
    nvlink_counts: tuple[tuple[int, ...], ...] = ()
    fabric_clique: str = ""


@dataclass(frozen=True)
class NvmlSample:
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[GpuSample, ...] = ()
    topology: Topology = field(default_factory=Topology)


def error_kind(exc: BaseException) -> str:
    """``NVMLError_GpuIsLost`` -> ``GpuIsLost``; unknown codes -> ``Code<N>``."""
    name = type(exc).__name__
    if name.startswith("NVMLError_"):
        return name[len("NVMLError_") :]
    value = getattr(exc, "value", None)
    return f"Code{value}" if value is not None else name


def cuda_version_text(value: int) -> str:
    """12040 -> "12.4" (NVML encodes major * 1000 + minor * 10)."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def normalize_bus_id(text: str | bytes) -> tuple[int, int, int, int] | None:
    """ "00000000:18:00.0" or "0000:18:00.0" -> (domain, bus, device, function)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    try:
        domain, bus, rest = text.strip().split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _query_failed(reasons: list[str]) -> bool:
    """Whether a query of this GPU failed (it is lost, wedged or not answering)."""
    return any(r in FATAL_GPU.values() or r.startswith(QUERY_FAILED) for r in reasons)


def _mig_profile(name: str) -> str:
    """ "NVIDIA H100 NVL MIG 3g.47gb" -> "3g.47gb"."""
    head, sep, tail = name.rpartition(" MIG ")
    return tail.strip() if sep and head else ""


class NvmlReader:
    """Holds NVML open between :meth:`open` and :meth:`close`; :meth:`read` samples everything."""

    def __init__(self) -> None:
        import pynvml

        self.nvml = pynvml
        self.errors: Counter[str] = Counter()
        self._open = False
        self._reopen_due = False
        self._event_set: Any = None
        self._xids: dict[int, list[int]] = {}  # GPU index -> critical Xids seen since NVML was opened
        self._pair_failed = False
        self.opened = 0  # successful initialisations, for the metric and the tests

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            kind = error_kind(exc)
            if kind == "LibraryNotFound":
                raise NvmlUnavailable(
                    "NVML library libnvidia-ml.so.1 not found: this machine has no NVIDIA driver installed "
                    "(or it is not visible in this container); use --fake-nvml NAME to run without a GPU"
                ) from exc
            if kind == "DriverNotLoaded":
                raise NvmlUnavailable("NVIDIA driver not loaded: NVML found its library but no running driver") from exc
            if kind == "NoPermission":
                raise NvmlUnavailable("no permission to use NVML (the NVIDIA device files are not accessible)") from exc
            raise NvmlUnavailable(f"NVML initialisation failed: {kind}: {exc}") from exc
        self._open = True
        self._reopen_due = False
        self.opened += 1
        self._xids = {}
        self._watch_xids()

    def close(self) -> None:
        """Release NVML (and the event set): the driver can then be unloaded."""
        if self._open:
            self._open = False
            if self._event_set is not None:
                try:
                    self.nvml.nvmlEventSetFree(self._event_set)
                except self.nvml.NVMLError as exc:
                    log.debug("nvmlEventSetFree: %s", exc)
                self._event_set = None
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError as exc:
                log.debug("nvmlShutdown: %s", exc)

    @property
    def is_open(self) -> bool:
        return self._open

    def reopen(self) -> None:
        """Shut NVML down and initialise it again (a reloaded driver; Xid marks start over)."""
        self.close()
        self.open()

    def _watch_xids(self) -> None:
        nvml = self.nvml
        if not hasattr(nvml, "nvmlEventSetCreate"):
            return
        try:
            event_set = nvml.nvmlEventSetCreate()
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.info("no Xid events: %s", error_kind(exc))
            return
        registered = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                nvml.nvmlDeviceRegisterEvents(handle, XID_EVENT, event_set)
                registered += 1
            except nvml.NVMLError as exc:
                log.info("GPU %d: no Xid events: %s", index, error_kind(exc))
        if registered:
            self._event_set = event_set
        else:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(event_set)

    def _drain_xids(self, limit: int = 1000) -> None:
        nvml = self.nvml
        if self._event_set is None:
            return
        for _ in range(limit):
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, 0)
            except nvml.NVMLError as exc:
                if error_kind(exc) != "Timeout":
                    self.errors[error_kind(exc)] += 1
                return
            if not int(data.eventType) & XID_EVENT:
                continue
            xid = int(data.eventData)
            try:
                index = int(nvml.nvmlDeviceGetIndex(data.device))
            except nvml.NVMLError as exc:
                log.warning("Xid %d on a GPU NVML cannot name: %s", xid, error_kind(exc))
                continue
            if xid in APPLICATION_XIDS:
                log.info("GPU %d: Xid %d (an application error, the GPU stays healthy)", index, xid)
                continue
            seen = self._xids.setdefault(index, [])
            if xid not in seen:
                seen.append(xid)
                log.warning("GPU %d: Xid %d (%s): marked unhealthy", index, xid, XID_TEXT.get(xid, "critical"))

    def __enter__(self) -> NvmlReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ error policy

    def _call(self, name: str, *args: Any, reasons: list[str] | None = None) -> Any:
        """Call one optional query by its pynvml name; None when it failed (see the module
        docstring for which way) or when this nvidia-ml-py release has no such wrapper."""
        fn = getattr(self.nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            self._record(exc, reasons, name)
            return None

    def _record(self, exc: BaseException, reasons: list[str] | None, what: str) -> None:
        kind = error_kind(exc)
        if kind in ABSENT:
            return
        if reasons is not None:
            reason = FATAL_GPU.get(kind) or f"{QUERY_FAILED}{what} failed: {kind}"
            if reason not in reasons:
                reasons.append(reason)
        self.errors[kind] += 1
        log.debug("%s: %s", what, kind)

    # ------------------------------------------------------------------ sampling

    def read(self) -> NvmlSample:
        nvml = self.nvml
        if self._reopen_due:
            self.close()
            try:
                self.open()
            except NvmlUnavailable as exc:
                self._reopen_due = True
                raise NvmlReadError(f"NVML cannot be opened again: {exc}") from exc
            log.info("NVML opened again")
        if not self._open:
            raise NvmlReadError("NVML is not open")
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            kind = error_kind(exc)
            self.errors[kind] += 1
            if kind in DRIVER_GONE:
                self._reopen_due = True
            raise NvmlReadError(f"nvmlDeviceGetCount failed: {kind}") from exc
        self._drain_xids()

        driver = self._call("nvmlSystemGetDriverVersion")
        cuda = self._call("nvmlSystemGetCudaDriverVersion_v2")
        if cuda is None:
            cuda = self._call("nvmlSystemGetCudaDriverVersion")

        handles: list[Any] = []
        gpus: list[GpuSample] = []
        reasons_by_gpu: list[list[str]] = []
        for index in range(count):
            reasons: list[str] = []
            handle = self._call("nvmlDeviceGetHandleByIndex", index, reasons=reasons)
            handles.append(handle)
            reasons_by_gpu.append(reasons)
            if handle is None:
                if not reasons:
                    reasons.append("NVML gave no handle for this GPU")
                gpus.append(GpuSample(index=index, healthy=False))
                continue
            gpus.append(self._gpu(index, handle, reasons))
            if not gpus[-1].uuid and NO_UUID not in reasons:
                reasons.append(NO_UUID)
            for xid in self._xids.get(index, ()):
                reasons.append(f"Xid {xid}: {XID_TEXT.get(xid, 'critical error')} (until the GPU is reset)")

        topology = self._topology(handles, gpus, reasons_by_gpu)
        # Topology and fabric queries may have added reasons (a GPU lost mid-read, fabric state).
        final = [
            replace(
                gpu,
                healthy=not any(not r.startswith(WARNING) for r in reasons),
                health_reasons=tuple(dict.fromkeys(reasons)),
            )
            for gpu, reasons in zip(gpus, reasons_by_gpu, strict=True)
        ]
        return NvmlSample(
            driver_version=_text(driver) if driver is not None else None,
            cuda_driver_version=cuda_version_text(int(cuda)) if cuda is not None else None,
            gpus=tuple(final),
            topology=topology,
        )

    def _memory(self, handle: Any, reasons: list[str]) -> tuple[int | None, int | None]:
        nvml = self.nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        info = self._call("nvmlDeviceGetMemoryInfo", handle, version, reasons=reasons) if version else None
        if info is None:
            info = self._call("nvmlDeviceGetMemoryInfo", handle, reasons=reasons)
        if info is None:
            return None, None
        total = int(info.total)
        used = max(total - int(info.free), 0)
        reserved = int(getattr(info, "reserved", 0) or 0)
        return max(total - reserved, 0), max(used - reserved, 0) if reserved else used

    def _gpu(self, index: int, handle: Any, reasons: list[str]) -> GpuSample:
        call = self._call
        uuid = call("nvmlDeviceGetUUID", handle, reasons=reasons)
        name = call("nvmlDeviceGetName", handle, reasons=reasons)
        pci = call("nvmlDeviceGetPciInfo", handle, reasons=reasons)
        memory_total, memory_used = self._memory(handle, reasons)
        util = call("nvmlDeviceGetUtilizationRates", handle, reasons=reasons)
        self._health(handle, reasons)
        mig_enabled, instances = self._mig(handle, reasons)
        minor = call("nvmlDeviceGetMinorNumber", handle, reasons=reasons)
        return GpuSample(
            index=index,
            uuid=_text(uuid) if uuid is not None else "",
            model=_text(name) if name is not None else "",
            memory_total=memory_total,
            memory_used=memory_used,
            utilization=min(max(int(util.gpu), 0), 100) if util is not None else None,
            pci_bus_id=_text(pci.busId) if pci is not None else "",
            mig_enabled=mig_enabled,
            mig_instances=instances,
            minor=int(minor) if minor is not None else None,
        )

    def _health(self, handle: Any, reasons: list[str]) -> None:
        nvml = self.nvml
        call = self._call
        uncorrected = call(
            "nvmlDeviceGetTotalEccErrors",
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
            reasons=reasons,
        )
        if uncorrected:
            reasons.append(f"{int(uncorrected)} uncorrectable ECC errors since the driver loaded")
        pending_pages = call("nvmlDeviceGetRetiredPagesPendingStatus", handle, reasons=reasons)
        if pending_pages:
            reasons.append(WARNING + "page retirement pending (takes effect at the next GPU reset)")
        rows = call("nvmlDeviceGetRemappedRows", handle, reasons=reasons)
        if rows is not None:
            _corrected, _uncorrected, pending, failure = rows
            if failure:
                reasons.append("row remapping failed (no spare rows left)")
            elif pending:
                reasons.append(WARNING + "row remapping pending (takes effect at the next GPU reset)")

    def _mig(self, handle: Any, reasons: list[str]) -> tuple[bool | None, tuple[MigInstance, ...]]:
        nvml = self.nvml
        call = self._call
        mode = call("nvmlDeviceGetMigMode", handle, reasons=reasons)
        if mode is None:
            return None, ()
        enabled = int(mode[0]) == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
        if not enabled:
            return False, ()
        instances = []
        slots = call("nvmlDeviceGetMaxMigDeviceCount", handle, reasons=reasons) or 0
        for slot in range(int(slots)):
            mig = call("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot, reasons=reasons)
            if mig is None:
                continue
            mig_uuid = call("nvmlDeviceGetUUID", mig, reasons=reasons)
            if mig_uuid is None:
                continue
            name = call("nvmlDeviceGetName", mig, reasons=reasons)
            memory = call("nvmlDeviceGetMemoryInfo", mig, reasons=reasons)
            gi = call("nvmlDeviceGetGpuInstanceId", mig, reasons=reasons)
            ci = call("nvmlDeviceGetComputeInstanceId", mig, reasons=reasons)
            instances.append(
                MigInstance(
                    uuid=_text(mig_uuid),
                    profile=_mig_profile(_text(name)) if name is not None else "",
                    memory_bytes=int(memory.total) if memory is not None else None,
                    gpu_instance_id=int(gi) if gi is not None else None,
                    compute_instance_id=int(ci) if ci is not None else None,
                )
            )
        return True, tuple(instances)

    # ------------------------------------------------------------------ topology

    def _links(
        self, handle: Any, reasons: list[str], gpu_by_bus: dict[tuple[int, int, int, int], int]
    ) -> tuple[int | None, Counter[int], int, set[tuple[int, int, int, int]]]:
        """(active links or None without NVLink, direct links per remote GPU, links into
        switches, bus ids of those switches where NVML gives them)."""
        nvml = self.nvml
        call = self._call
        direct: Counter[int] = Counter()
        switch_links = 0
        switches: set[tuple[int, int, int, int]] = set()
        active = 0
        has_nvlink = False
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            state = call("nvmlDeviceGetNvLinkState", handle, link, reasons=reasons)
            if state is None:
                continue
            has_nvlink = True
            if not state:
                continue
            active += 1
            remote_type = call("nvmlDeviceGetNvLinkRemoteDeviceType", handle, link, reasons=reasons)
            pci = call("nvmlDeviceGetNvLinkRemotePciInfo", handle, link, reasons=reasons)
            bus = normalize_bus_id(pci.busId) if pci is not None else None
            if bus is not None and bus in gpu_by_bus:
                direct[gpu_by_bus[bus]] += 1
            elif remote_type in (NVLINK_DEVICE_TYPE_SWITCH, None):
                # Into an NVSwitch, or a far end NVML cannot name: which GPUs it reaches is
                # settled per pair by the NVLink P2P status.
                switch_links += 1
                if bus is not None:
                    switches.add(bus)
        return (active if has_nvlink else None), direct, switch_links, switches

    def _fabric(self, handle: Any, reasons: list[str]) -> str:
        """This GPU's clique (``clusterUuid.cliqueId``), ``""`` when it has none."""
        nvml = self.nvml
        info: Any = None
        for struct_name in ("c_nvmlGpuFabricInfo_v3_t", "c_nvmlGpuFabricInfo_v2_t"):
            struct = getattr(nvml, struct_name, None)
            if struct is None or not hasattr(nvml, "nvmlDeviceGetGpuFabricInfoV") or not hasattr(nvml, "byref"):
                continue
            candidate = struct()
            try:
                nvml.nvmlDeviceGetGpuFabricInfoV(handle, nvml.byref(candidate))
                info = candidate
                break
            except nvml.NVMLError as exc:
                kind = error_kind(exc)
                if kind == "ArgumentVersionMismatch":
                    continue
                if kind == "FunctionNotFound":
                    break
                self._record(exc, reasons, "nvmlDeviceGetGpuFabricInfoV")
                return ""
        if info is None and hasattr(nvml, "c_nvmlGpuFabricInfo_t") and hasattr(nvml, "byref"):
            legacy = nvml.c_nvmlGpuFabricInfo_t()
            if self._call("nvmlDeviceGetGpuFabricInfo", handle, nvml.byref(legacy), reasons=reasons) is None:
                return ""
            info = legacy
        if info is None:
            return ""
        state = int(info.state)
        if state == 0:  # NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
            return ""
        if state != FABRIC_STATE_COMPLETED:
            reasons.append(f"NVLink fabric registration not complete (state {state})")
            return ""
        if int(info.status) != 0:
            reasons.append(f"NVLink fabric registration failed (NVML status {int(info.status)})")
            return ""
        summary = int(getattr(info, "healthSummary", 0))
        if summary == FABRIC_HEALTH_UNHEALTHY:
            reasons.append("NVLink fabric unhealthy")
        elif summary == FABRIC_HEALTH_LIMITED:
            reasons.append(WARNING + "NVLink fabric at limited capacity")
        raw = bytes(bytearray(info.clusterUuid))
        if not any(raw):
            return ""
        return f"{_uuid.UUID(bytes=raw[:16])}.{int(info.cliqueId)}"

    def _pair(self, name: str, *args: Any) -> Any:
        """A query of two GPUs: its failure is not recorded against either yet (see :meth:`_blame`)."""
        fn = getattr(self.nvml, name, None)
        self._pair_failed = False
        if fn is None:
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            kind = error_kind(exc)
            if kind not in ABSENT:
                self.errors[kind] += 1
                self._pair_failed = True
                log.debug("%s: %s", name, kind)
            return None

    def _blame(self, handles: list[Any], reasons: list[list[str]], failed: list[bool], a: int, b: int) -> None:
        """After a failed pairwise query: ask each GPU of the pair alone, and mark the one that fails."""
        if not self._pair_failed:
            return
        self._pair_failed = False
        for i in (a, b):
            self._call("nvmlDeviceGetPciInfo", handles[i], reasons=reasons[i])
            failed[i] = failed[i] or _query_failed(reasons[i])

    def _topology(self, handles: list[Any], gpus: list[GpuSample], reasons: list[list[str]]) -> Topology:
        nvml = self.nvml
        n = len(handles)
        gpu_by_bus = {bus: g.index for g in gpus if (bus := normalize_bus_id(g.pci_bus_id)) is not None}
        links = [
            self._links(h, reasons[i], gpu_by_bus) if h is not None else (None, Counter(), 0, set())
            for i, h in enumerate(handles)
        ]
        for i, (active, *_rest) in enumerate(links):
            if active is not None:
                gpus[i] = replace(gpus[i], nvlink_links=active)
        counts = [[0] * n for _ in range(n)]
        matrix = [[""] * n for _ in range(n)]
        failed = [_query_failed(r) for r in reasons]
        for a in range(n):
            for b in range(a + 1, n):
                ha, hb = handles[a], handles[b]
                if ha is None or hb is None or failed[a] or failed[b]:
                    continue
                count = max(links[a][1][b], links[b][1][a])
                if not count and links[a][2] and links[b][2]:
                    status = self._pair("nvmlDeviceGetP2PStatus", ha, hb, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
                    self._blame(handles, reasons, failed, a, b)
                    if status is not None:
                        reachable = int(status) == nvml.NVML_P2P_STATUS_OK
                    elif links[a][3] and links[b][3]:
                        reachable = bool(links[a][3] & links[b][3])
                    else:
                        reachable = True
                    if reachable:
                        count = min(links[a][2], links[b][2])
                counts[a][b] = counts[b][a] = count
                if count:
                    kind = "nvlink"
                else:
                    level = self._pair("nvmlDeviceGetTopologyCommonAncestor", ha, hb)
                    self._blame(handles, reasons, failed, a, b)
                    kind = TOPOLOGY_LEVELS.get(int(level), "") if level is not None else ""
                matrix[a][b] = matrix[b][a] = kind
        cliques: Counter[str] = Counter()
        for i, h in enumerate(handles):
            if h is not None and (clique := self._fabric(h, reasons[i])):
                cliques[clique] += 1
        return Topology(
            matrix=tuple(tuple(row) for row in matrix),
            nvlink_counts=tuple(tuple(row) for row in counts),
            fabric_clique=cliques.most_common(1)[0][0] if cliques else "",
        )
