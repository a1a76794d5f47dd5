"""ClusterSnapshot: the cluster as per-node numpy arrays, cheap to score and to update in place.

Shapes: N nodes, G = the most GPUs on any node (shorter nodes are padded with invalid GPUs).
GPU occupancy comes from pods: the kubelet's view in the node's report is the truth; otherwise the
GPUs gpusched chose at bind time; otherwise the first free ones (pods bound by someone else).

A MIG-enabled GPU is not valid as a whole GPU (`gpu_valid` false, `gpu_mig` true): no whole-GPU
or share pod can have it. Its instances are counted per profile instead: `mig_free[profile]` and
`mig_total[profile]`, (N,) arrays. An instance is free when its GPU is healthy, the report names no
pod holding it, and no pod placed here holds it. A MIG pod holds instances of its profile
(`Placement.mig`): those the report says it holds, else the first free ones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from scheduler.core.gpu_assignment import GpuAssignments
from scheduler.core.gpu_models import matching_ids
from scheduler.core.images import normalize_image
from scheduler.core.quantity import version_code
from scheduler.core.topology import DEFAULT_TIERS
from scheduler.core.types import LINK_AFFINITY, MigInfo, NodeState, PodRequest

UNKNOWN_MODEL = -1
CHANGE_LOG = 8192  # changes remembered node by node (ClusterSnapshot.changed_since)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a pod holds resources: node index, GPU indices, and how much of each."""

    node: int
    gpus: tuple[int, ...]
    milli: int  # per GPU
    cpu_milli: int
    memory: int
    gpu_count: int  # GPUs counted against the node's allocatable
    mig: tuple[str, ...] = ()  # UUIDs of the MIG instances it holds


def owner_key(pod: PodRequest) -> str:
    """The pod's controller qualified by namespace ("ns/ReplicaSet/web-5d8f"), "" without one."""
    return f"{pod.namespace}/{pod.owner}" if pod.owner else ""


def tier_domains(nodes: Sequence[NodeState], keys: Sequence[str]) -> np.ndarray:
    """(N, T) ids of each node's domain per tier label, qualified by the outer tiers' values.

    A node without a tier's label is alone in that tier; its inner tiers are still grouped by the
    labels it has (racks group nodes even where no block label is set).
    """
    ids: dict[tuple[str, ...], int] = {}
    out = np.zeros((len(nodes), len(keys)), dtype=np.int64)
    for i, node in enumerate(nodes):
        path: tuple[str, ...] = ()
        for t, key in enumerate(keys):
            value = node.labels.get(key)
            if value is None:
                out[i, t] = ids.setdefault((key, "\x00alone", node.name), len(ids))
                continue
            path = (*path, key, value)
            out[i, t] = ids.setdefault(path, len(ids))
    return out


class SnapshotError(ValueError):
    """A placement that does not fit the snapshot."""


@dataclass(frozen=True, slots=True)
class MigSlot:
    """One MIG instance of a node: its GPU, profile and memory, and whether the report names a
    pod holding it (`reported`: the kubelet's holders)."""

    gpu: int
    profile: str
    memory: int
    reported: tuple[str, ...]
    usable: bool  # its GPU is healthy

    @property
    def counted_free(self) -> bool:
        """Whether `mig_free` counts it while no pod placed here holds it."""
        return self.usable and not self.reported


class ClusterSnapshot:
    """Nodes as arrays, plus the pods that hold their GPUs."""

    def __init__(
        self,
        nodes: Sequence[NodeState],
        pods: Iterable[PodRequest] = (),
        tiers: Sequence[str] = DEFAULT_TIERS,
        assignments: GpuAssignments | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.names = [n.name for n in self.nodes]
        self.name_array = np.array(self.names, dtype=object)  # names[nodes] for an index array, at C speed
        self.index = {name: i for i, name in enumerate(self.names)}
        self.tier_keys = tuple(tiers)
        n = len(self.nodes)
        g = max([max(len(node.gpus), node.gpu_count) for node in self.nodes] + [1])
        self.max_gpus = g

        self.model_names: list[str] = []
        self._model_ids: dict[str, int] = {}
        self.gpu_valid = np.zeros((n, g), dtype=bool)
        self.gpu_model = np.full((n, g), UNKNOWN_MODEL, dtype=np.int32)
        self.gpu_memory = np.zeros((n, g), dtype=np.int64)
        self.gpu_healthy = np.zeros((n, g), dtype=bool)
        self.gpu_milli_free = np.zeros((n, g), dtype=np.int32)
        self.gpu_mig = np.zeros((n, g), dtype=bool)  # MIG-enabled: its instances are in mig_*
        self.mig_slots: list[dict[str, MigSlot]] = [{} for _ in range(n)]  # per node: uuid -> slot
        self.mig_held: list[dict[str, str]] = [{} for _ in range(n)]  # per node: uuid -> pod key placed on it
        self.mig_free: dict[str, np.ndarray] = {}  # profile -> (N,) free instances
        self.mig_total: dict[str, np.ndarray] = {}  # profile -> (N,) instances on healthy GPUs
        self.link_affinity = np.zeros((n, g, g), dtype=np.float32)
        self.gpu_alloc = np.zeros(n, dtype=np.int32)  # allocatable GPUs per the Node object
        self.gpu_used_api = np.zeros(n, dtype=np.int32)  # GPUs requested by pods on the node
        self.cpu_free = np.zeros(n, dtype=np.int64)
        self.memory_free = np.zeros(n, dtype=np.int64)
        self.cuda = np.full(n, -1, dtype=np.int64)
        self.has_report = np.zeros(n, dtype=bool)
        # When each node's report was written, on the clock of `read_at` (inf: no report; -inf: a
        # report with no readable time, infinitely old): from the nodes' report ages as loaded,
        # until ClusterState hands over its live times (use_report_times) before each decision.
        self.read_at = 0.0
        self._loaded_report_time = np.full(n, np.inf, dtype=np.float64)
        self.report_time = self._loaded_report_time
        self._earliest_report_time: float | None = None  # as ClusterState keeps it; None: find it
        self.ready = np.zeros(n, dtype=bool)
        self.pull_bw = np.zeros(n, dtype=np.float64)
        self.download_bw = np.zeros(n, dtype=np.float64)
        self.disk_bw = np.zeros(n, dtype=np.float64)
        # Free and total bytes of (image filesystem, model cache) per node; -1 where not reported.
        self.disk_free = np.full((n, 2), -1.0)
        self.disk_total = np.full((n, 2), -1.0)
        self.images: dict[str, dict[int, int]] = {}
        self.models: dict[str, dict[int, int]] = {}
        self.lora_adapters: dict[str, dict[int, int]] = {}
        self.tier_ids = np.zeros((n, len(self.tier_keys)), dtype=np.int64)

        for i, node in enumerate(self.nodes):
            self._load_node(i, node)
        self._load_tiers()
        # Nodes with the same GPU wiring share an id, so per-wiring work is done once per decision.
        self._link_classes: dict[bytes, int] = {}
        self.link_class = np.array(
            [self._link_classes.setdefault(self.link_affinity[i].tobytes(), len(self._link_classes)) for i in range(n)],
            dtype=np.int64,
        )

        # Values derived from this snapshot (node tables, fragmentation state, tier domains), built
        # once by whoever asks first; see memo().
        self._memo: dict[Hashable, Any] = {}
        self.pods: dict[str, PodRequest] = {}
        self.placements: dict[str, Placement] = {}
        self.node_pods: list[set[str]] = [set() for _ in range(n)]
        # Kept in step by place() and remove(): weights identity -> node -> pods serving it (every pod
        # with `gpusched.io/model` that is not a training pod), and "namespace/Kind/name" of a
        # controller -> node -> its pods there (replica spreading).
        self.serving: dict[str, dict[int, int]] = {}
        self.owner_pods: dict[str, dict[int, int]] = {}
        # Pods the API shows on a node that has no room left for them: pod key -> why.
        self.conflicts: dict[str, str] = {}
        # Occupancy changes: `changes` counts every place, remove and node reload, and `changed_at`
        # holds each node's count at its last one, so that values derived per node (fragmentation)
        # are computed again only for the nodes that changed since they last looked.
        self.changes = 0
        self.changed_at = np.zeros(n, dtype=np.int64)
        # The node of each of the last changes, in order: change number c is _change_log[c - 1 -
        # _log_base]. Values kept for every node ask it which nodes changed since they last looked.
        self._change_log: list[int] = []
        self._log_base = 0
        # Counts changes to what nodes hold of images, weights and adapters: values that read the
        # sizes other nodes report (the largest size of an image) depend on it too.
        self.catalog = 0
        # Pods whose gpusched.io/gpu-ids the kubelet contradicts (core/gpu_assignment.py); given by
        # the caller when it must outlive this snapshot.
        self.assignments = assignments if assignments is not None else GpuAssignments()
        for pod in pods:
            self.place_bound(pod)

    @property
    def report_age(self) -> np.ndarray:
        """Seconds since each node's report was written, as of `read_at` (inf: no report, or no
        readable time; 0 for a time ahead of that clock). Computed on each read: the plugins on a
        decision's path read `report_time`."""
        age = np.maximum(self.read_at - self.report_time, 0.0)
        age[self.report_time == np.inf] = np.inf
        return age

    def use_report_times(self, times: np.ndarray, now: float, earliest: float) -> None:
        """Take `times` (one per node, as `report_time`; the caller keeps them current, and
        `earliest`, their minimum) as the reports' times, and `now` as the time the next decisions
        are made at."""
        self.report_time = times
        self.read_at = now
        self._earliest_report_time = earliest

    def earliest_report_time(self) -> float:
        """The earliest report time (inf without any report; -inf with one of no readable time)."""
        if self._earliest_report_time is None:
            return float(self.report_time.min(initial=np.inf))
        return self._earliest_report_time

    # ----------------------------------------------------------------- loading
    def _load_node(self, i: int, node: NodeState) -> None:
        self.gpu_alloc[i] = node.gpu_count
        self.cpu_free[i] = node.cpu_milli
        self.memory_free[i] = node.memory
        self.ready[i] = node.ready and node.schedulable
        self.has_report[i] = node.has_report
        self._loaded_report_time[i] = np.inf if node.report_age_s is None else self.read_at - node.report_age_s
        self.cuda[i] = version_code(node.cuda) if node.cuda else -1
        self.pull_bw[i] = node.pull_bytes_per_s
        self.download_bw[i] = node.download_bytes_per_s
        self.disk_bw[i] = node.disk_bytes_per_s
        self.disk_free[i] = (node.image_fs_free, node.model_cache_free)
        self.disk_total[i] = (node.image_fs_total, node.model_cache_total)
        if node.gpus:
            for gpu in node.gpus:
                j = gpu.index
                if not 0 <= j < self.max_gpus:
                    continue
                self.gpu_valid[i, j] = not gpu.mig_enabled
                self.gpu_healthy[i, j] = gpu.healthy
                self.gpu_memory[i, j] = gpu.memory
                self.gpu_milli_free[i, j] = 0 if gpu.mig_enabled else 1000
                self.gpu_mig[i, j] = gpu.mig_enabled
                for mig in gpu.mig:
                    self._load_mig(i, j, gpu.healthy, mig)
                if gpu.model:
                    if gpu.model not in self._model_ids:
                        self._model_ids[gpu.model] = len(self.model_names)
                        self.model_names.append(gpu.model)
                    self.gpu_model[i, j] = self._model_ids[gpu.model]
            for a, row in enumerate(node.links[: self.max_gpus]):
                for b, kind in enumerate(row[: self.max_gpus]):
                    if a != b:
                        self.link_affinity[i, a, b] = LINK_AFFINITY.get(kind, 0.0)
        else:
            # No report: the Node object's count of anonymous GPUs of unknown model and memory.
            self.gpu_valid[i, : node.gpu_count] = True
            self.gpu_healthy[i, : node.gpu_count] = True
            self.gpu_milli_free[i, : node.gpu_count] = 1000
        for image, size in node.images.items():
            self.images.setdefault(normalize_image(image), {})[i] = size
        for table, source in (
            (self.models, node.models),
            (self.lora_adapters, node.lora_adapters),
        ):
            for key, size in source.items():
                table.setdefault(key, {})[i] = size

    def _load_mig(self, i: int, j: int, healthy: bool, mig: MigInfo) -> None:
        slot = MigSlot(j, mig.profile, mig.memory, mig.holders, healthy)
        self.mig_slots[i][mig.uuid] = slot
        if mig.profile not in self.mig_free:
            self.mig_free[mig.profile] = np.zeros(len(self.nodes), dtype=np.int32)
            self.mig_total[mig.profile] = np.zeros(len(self.nodes), dtype=np.int32)
        if healthy:
            self.mig_total[mig.profile][i] += 1
            self.mig_free[mig.profile][i] += slot.counted_free

    def mig_free_of(self, profile: str) -> np.ndarray:
        """(N,) free MIG instances of `profile` per node (zeros for a profile no node has)."""
        found = self.mig_free.get(profile)
        return found if found is not None else np.zeros(len(self.nodes), dtype=np.int32)

    def mig_total_of(self, profile: str) -> np.ndarray:
        """(N,) MIG instances of `profile` on healthy GPUs per node, held or not."""
        found = self.mig_total.get(profile)
        return found if found is not None else np.zeros(len(self.nodes), dtype=np.int32)

    def kubelet_migs(self, node: int, key: str) -> tuple[str, ...]:
        """The MIG instances the node's report (the kubelet) says the pod holds there."""
        return tuple(uuid for uuid, slot in self.mig_slots[node].items() if key in slot.reported)

    def _free_migs(self, node: int, pod: PodRequest) -> tuple[str, ...]:
        """The first free instances of the pod's profile on `node`, in the report's order."""
        held = self.mig_held[node]
        free = [
            uuid
            for uuid, slot in self.mig_slots[node].items()
            if slot.profile == pod.mig_profile and slot.usable and not slot.reported and uuid not in held
        ]
        return tuple(free[: pod.mig_count])

    def _check_migs(self, pod: PodRequest, node: int, chosen: Sequence[str]) -> None:
        name = self.names[node]
        if len(chosen) < pod.mig_count:
            raise SnapshotError(
                f"{pod.key}: node {name} has {len(chosen)} of {pod.mig_count} MIG {pod.mig_profile} instances free"
            )
        for uuid in chosen:
            slot = self.mig_slots[node].get(uuid)
            if slot is None or slot.profile != pod.mig_profile:
                raise SnapshotError(f"{pod.key}: node {name} has no MIG {pod.mig_profile} instance {uuid}")
            holder = self.mig_held[node].get(uuid) or next((p for p in slot.reported if p != pod.key), None)
            if holder is not None:
                # Never two pods on one instance: whoever holds it keeps it.
                raise SnapshotError(f"{pod.key}: MIG instance {uuid} of node {name} is held by {holder}")

    def _load_tiers(self) -> None:
        self.tier_ids[:] = tier_domains(self.nodes, self.tier_keys)

    def kubelet_gpus(self, node: int, key: str) -> tuple[int, ...]:
        """The GPUs the node's report (the kubelet, through PodResources) says the pod holds there."""
        return tuple(gpu.index for gpu in self.nodes[node].gpus if key in gpu.holders)

    def place_bound(self, pod: PodRequest) -> Placement | None:
        """Place a pod the API (or the assume-cache) shows on a node: on the GPUs the node's report
        says it holds (the kubelet's choice wins over gpusched's annotation, and a difference is
        recorded in `assignments`), else those gpusched chose, else any free ones; record a conflict
        when none fit. None when its node is unknown or it does not fit."""
        at = self.index.get(pod.node_name)
        if at is None:
            return None
        self.conflicts.pop(pod.key, None)
        if pod.wants_mig:
            return self._place_bound_mig(pod, at)
        kubelet = self.kubelet_gpus(at, pod.key)
        self.assignments.observe(pod.key, pod.gpu_ids, kubelet)
        try:
            return self.place(pod, at, kubelet or pod.gpu_ids or None)
        except SnapshotError:
            # The GPUs it names are taken (or gone): hold any free ones, else record it.
            try:
                return self.place(pod, at)
            except SnapshotError as exc:
                self.conflicts[pod.key] = str(exc)
                return None

    def _place_bound_mig(self, pod: PodRequest, at: int) -> Placement | None:
        """A bound MIG pod on the instances the report says it holds, else on any free ones."""
        try:
            return self.place(pod, at, mig=self.kubelet_migs(at, pod.key) or None)
        except SnapshotError:
            try:
                return self.place(pod, at)
            except SnapshotError as exc:
                self.conflicts[pod.key] = str(exc)
                return None

    def update_node(self, i: int, node: NodeState, last: Callable[[PodRequest], bool] | None = None) -> bool:
        """Replace what node `i` is (its Node object and report), keeping the pods placed on it.

        The node's rows are reloaded and its pods placed again (the report may say other GPUs are
        theirs now), those for which `last` is true after the others. Derived values in the memo
        are dropped when the node's GPUs, allocatable resources or labels changed. False, with
        nothing changed, when the node has more GPUs than the snapshot has columns: the caller
        builds a new snapshot.
        """
        if max(len(node.gpus), node.gpu_count) > self.max_gpus or any(g.index >= self.max_gpus for g in node.gpus):
            return False
        old = self.nodes[i]
        rows: tuple[np.ndarray, ...] = (self.gpu_valid, self.gpu_healthy, self.gpu_model, self.gpu_memory, self.gpu_mig)
        before = [a[i].copy() for a in rows]
        held = [self.pods[k] for k in sorted(self.node_pods[i])]
        if last is not None:  # these go after the others (gang holds after the pods that exist)
            held.sort(key=last)
        for pod in held:
            self.remove(pod.key)
        for table, source in ((self.models, old.models), (self.lora_adapters, old.lora_adapters)):
            for key in source:
                self._unindex(table, key, i)
        for image in old.images:
            self._unindex(self.images, normalize_image(image), i)
        self.gpu_valid[i] = False
        self.gpu_healthy[i] = False
        self.gpu_model[i] = UNKNOWN_MODEL
        self.gpu_memory[i] = 0
        self.gpu_milli_free[i] = 0
        self.gpu_mig[i] = False
        self.mig_slots[i] = {}
        for counts in (*self.mig_free.values(), *self.mig_total.values()):
            counts[i] = 0
        self.link_affinity[i] = 0.0
        self.nodes[i] = node
        if (node.images, node.models, node.lora_adapters) != (old.images, old.models, old.lora_adapters):
            self.catalog += 1
        self._load_node(i, node)
        self._changed(i)
        wiring = self.link_affinity[i].tobytes()
        self.link_class[i] = self._link_classes.setdefault(wiring, len(self._link_classes))
        if node.labels != old.labels:
            self._load_tiers()
        same_gpus = all(np.array_equal(b, a[i]) for b, a in zip(before, rows, strict=True))
        same_node = (node.labels, node.cpu_milli, node.memory, node.gpu_count) == (
            old.labels,
            old.cpu_milli,
            old.memory,
            old.gpu_count,
        )
        if not (same_gpus and same_node):
            self._memo.clear()
        for pod in held:
            self.place_bound(pod)
        return True

    @staticmethod
    def _unindex(table: dict[str, dict[int, int]], key: str, node: int) -> None:
        holders = table.get(key)
        if holders is not None:
            holders.pop(node, None)
            if not holders:
                del table[key]

    def memo(self, key: Hashable, build: Callable[[ClusterSnapshot], T]) -> T:
        """The value stored under `key`, built by `build(self)` on first use.

        For values that depend only on what the snapshot was built with (Node objects, labels), or
        that keep themselves in step with its occupancy (FragmentationState refreshes the nodes
        whose `changed_at` moved). The one per-snapshot cache of the core and plugins: a snapshot's
        memo goes with it.
        """
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = build(self)
            return value

    # ------------------------------------------------------------- occupancy
    def model_ids(self, wanted: Sequence[str]) -> list[int]:
        """Ids (`gpu_model` values) of the reported models that any of the `wanted` names names, by
        core/gpu_models.py's rule ("H100" names "NVIDIA H100 80GB HBM3"); none is an empty list."""
        return matching_ids(wanted, self.model_names)

    def gpu_free_count(self) -> np.ndarray:
        """Whole GPUs free per node: fully free, healthy, and within the API's allocatable."""
        whole = ((self.gpu_milli_free >= 1000) & self.gpu_valid & self.gpu_healthy).sum(axis=1)
        return np.minimum(whole, np.maximum(self.gpu_alloc - self.gpu_used_api, 0))

    def first_free_gpus(self, node: int, count: int, milli: int) -> tuple[int, ...]:
        usable = self.gpu_valid[node] & self.gpu_healthy[node] & (self.gpu_milli_free[node] >= milli)
        found = np.flatnonzero(usable)[:count]
        return tuple(int(x) for x in found)

    def place(
        self, pod: PodRequest, node: int, gpus: Sequence[int] | None = None, mig: Sequence[str] | None = None
    ) -> Placement:
        """Record that `pod` holds resources on `node`; GPUs (MIG instances for a MIG pod) default
        to the first free ones."""
        if pod.key in self.placements:
            self.remove(pod.key)
        migs = tuple(mig) if mig else self._free_migs(node, pod) if pod.wants_mig else ()
        if migs or pod.wants_mig:
            self._check_migs(pod, node, migs)
        milli = pod.milli_per_gpu
        count = pod.gpus_needed
        chosen = tuple(gpus) if gpus else self.first_free_gpus(node, count, milli)
        if len(chosen) < count:
            raise SnapshotError(f"{pod.key}: node {self.names[node]} has {len(chosen)} of {count} GPUs free")
        for j in chosen:
            if not (0 <= j < self.max_gpus and self.gpu_valid[node, j]):
                raise SnapshotError(f"{pod.key}: node {self.names[node]} has no GPU {j}")
            if self.gpu_milli_free[node, j] < milli:
                # Never a negative free count: whoever holds the GPU keeps it (docs/ARCHITECTURE.md).
                free = int(self.gpu_milli_free[node, j])
                raise SnapshotError(f"{pod.key}: GPU {j} of node {self.names[node]} has {free} of {milli} milli free")
        placement = Placement(node, chosen, milli, pod.cpu_milli, pod.memory, pod.gpu_count, migs)
        for j in chosen:
            self.gpu_milli_free[node, j] -= milli
        for uuid in migs:
            self.mig_held[node][uuid] = pod.key
            slot = self.mig_slots[node][uuid]
            self.mig_free[slot.profile][node] -= slot.counted_free
        self.cpu_free[node] -= pod.cpu_milli
        self.memory_free[node] -= pod.memory
        self.gpu_used_api[node] += pod.gpu_count
        self.pods[pod.key] = pod
        self.placements[pod.key] = placement
        self.node_pods[node].add(pod.key)
        for table, key in self._indexed(pod):
            held = table.setdefault(key, {})
            held[node] = held.get(node, 0) + 1
        self._changed(node)
        return placement

    def remove(self, key: str) -> PodRequest | None:
        """Release what a pod holds; unknown keys are ignored."""
        placement = self.placements.pop(key, None)
        pod = self.pods.pop(key, None)
        if placement is None:
            return pod
        for j in placement.gpus:
            self.gpu_milli_free[placement.node, j] += placement.milli
        for uuid in placement.mig:
            self.mig_held[placement.node].pop(uuid, None)
            slot = self.mig_slots[placement.node].get(uuid)
            if slot is not None:  # gone from the report: nothing to give back
                self.mig_free[slot.profile][placement.node] += slot.counted_free
        self.cpu_free[placement.node] += placement.cpu_milli
        self.memory_free[placement.node] += placement.memory
        self.gpu_used_api[placement.node] -= placement.gpu_count
        self.node_pods[placement.node].discard(key)
        self._changed(placement.node)
        if pod is not None:
            for table, index_key in self._indexed(pod):
                held = table.get(index_key, {})
                left = held.get(placement.node, 0) - 1
                if left > 0:
                    held[placement.node] = left
                else:
                    held.pop(placement.node, None)
                    if not held:
                        table.pop(index_key, None)
        return pod

    def _changed(self, node: int) -> None:
        self.changes += 1
        self.changed_at[node] = self.changes
        log = self._change_log
        log.append(node)
        if len(log) > CHANGE_LOG:
            drop = len(log) // 2
            del log[:drop]
            self._log_base += drop

    def changed_since(self, changes: int) -> list[int] | None:
        """The nodes of the changes after change number `changes` (a node may repeat), or None
        when the log of changes no longer reaches back that far."""
        if changes < self._log_base:
            return None
        return self._change_log[changes - self._log_base :]

    def _indexed(self, pod: PodRequest) -> list[tuple[dict[str, dict[int, int]], str]]:
        """The (index, key) pairs a pod counts in: `serving` and `owner_pods`."""
        out = []
        if pod.model and pod.workload != "training":
            out.append((self.serving, pod.model))
        if pod.owner:
            out.append((self.owner_pods, owner_key(pod)))
        return out

    @contextmanager
    def without(self, keys: Iterable[str]) -> Iterator[None]:
        """Pretend the given pods are gone (preemption what-ifs, explaining a placed pod)."""
        held = [(self.pods[k], self.placements[k]) for k in keys if k in self.placements]
        for pod, _ in held:
            self.remove(pod.key)
        try:
            yield
        finally:
            for pod, placement in held:
                self.place(pod, placement.node, placement.gpus, placement.mig)

    def over_committed(self) -> list[str]:
        """Nodes where some GPU or count is held more than once over (an invariant check)."""
        bad = (self.gpu_milli_free < 0).any(axis=1) | (self.gpu_used_api > self.gpu_alloc)
        for free in self.mig_free.values():
            bad |= free < 0
        return [self.names[i] for i in np.flatnonzero(bad)]

    def __len__(self) -> int:
        return len(self.nodes)
