"""Plain, frozen descriptions of what a pod asks for and what a node has."""

from __future__ import annotations

from dataclasses import dataclass, field

# Pair affinity between two GPUs of a node, 0..1 (see plugins/nvlink.py for how it is scored).
LINK_AFFINITY = {
    "nvlink": 1.0,  # any NVLink / NVSwitch path
    "PIX": 0.4,  # same PCIe switch
    "PXB": 0.35,  # several PCIe switches, same root
    "PHB": 0.25,  # same host bridge
    "NODE": 0.15,  # same NUMA node, different host bridges
    "SYS": 0.0,  # across sockets
}


@dataclass(frozen=True, slots=True)
class PodRequest:
    """What one pod asks of gpusched, parsed from its spec and annotations."""

    namespace: str
    name: str
    uid: str = ""
    gpu_count: int = 0
    gpu_milli: int = 0  # a share of one GPU, 1..999; 0 means whole GPUs
    gpu_memory: int = 0  # minimum memory per GPU, bytes
    gpu_models: tuple[str, ...] = ()  # allowed models; empty means any
    # MIG instances by the device plugin's "mixed" names: nvidia.com/mig-<profile> (e.g. "1g.12gb").
    mig_profile: str = ""
    mig_count: int = 0
    cpu_milli: int = 0
    memory: int = 0
    cuda: tuple[int, ...] = ()  # minimum CUDA driver version
    images: tuple[str, ...] = ()
    model: str = ""  # weights identity, "org/name@revision"
    model_bytes: int = 0
    kv_cache_bytes: int = 0  # GPU memory the replica wants for its KV cache, over all its GPUs; 0: unstated
    lora_adapters: tuple[str, ...] = ()
    workload: str = ""  # "training", "inference" or ""
    pod_group: str = ""
    min_member: int = 0
    # The API object that gives the gang's size, "<api group>/<name>" in the pod's namespace
    # (core/gang_sources.py); "": the size is on the pod, or it is no gang.
    group_size_ref: str = ""
    rank: int | None = None
    priority: int = 0  # spec.priority: who may preempt whom
    planned_node: str = ""  # gang members: the node of the gang's plan, once written on the pod
    gang_plan: str = ""  # gang members: id of the plan written on the pod before its gang's binds
    nominated_node: str = ""  # status.nominatedNodeName: where kube-scheduler's preemption made room
    owner: str = ""  # "Kind/name" of the controller, for replica spreading
    node_name: str = ""  # set once bound
    gpu_ids: tuple[int, ...] = ()  # GPUs gpusched chose at bind time, if any
    errors: tuple[str, ...] = ()  # malformed annotations: the pod cannot be placed until fixed

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants_gpu(self) -> bool:
        return self.gpu_count > 0 or self.gpu_milli > 0

    @property
    def wants_mig(self) -> bool:
        return self.mig_count > 0

    @property
    def gpus_needed(self) -> int:
        """Devices the pod occupies: a shared-GPU pod occupies part of one."""
        return self.gpu_count if self.gpu_count > 0 else (1 if self.gpu_milli > 0 else 0)

    @property
    def milli_per_gpu(self) -> int:
        return self.gpu_milli if self.gpu_milli > 0 else 1000


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU of a node as its agent reported it."""

    index: int
    model: str = ""
    memory: int = 0  # total bytes, 0 when unknown
    uuid: str = ""
    healthy: bool = True
    holders: tuple[str, ...] = ()  # pod keys that hold this GPU (per the kubelet)
    used_milli: int = 0  # shared-GPU milli already held; 1000 when held whole
    mig_enabled: bool = False  # split into MIG instances: no whole-GPU pod may have it
    mig: tuple[MigInfo, ...] = ()  # its MIG instances, when mig_enabled


@dataclass(frozen=True, slots=True)
class MigInfo:
    """One MIG instance of a GPU as its agent reported it."""

    uuid: str
    profile: str = ""  # "1g.12gb", "3g.40gb": the part of nvidia.com/mig-<profile>
    memory: int = 0  # bytes, 0 when unknown
    holders: tuple[str, ...] = ()  # pod keys that hold this instance (per the kubelet)


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node: allocatable resources from the API, GPUs and caches from its GPUNodeReport."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    gpu_count: int = 0  # allocatable GPUs from the Node object
    cpu_milli: int = 0
    memory: int = 0
    ready: bool = True
    schedulable: bool = True
    gpus: tuple[GpuInfo, ...] = ()  # from the report; empty when there is no report
    links: tuple[tuple[str, ...], ...] = ()  # per GPU pair: "nvlink", "PIX", ... ("" on the diagonal)
    cuda: tuple[int, ...] = ()  # CUDA driver version, () when unknown
    driver: str = ""
    images: dict[str, int] = field(default_factory=dict)  # image reference -> bytes
    models: dict[str, int] = field(default_factory=dict)  # weights identity -> bytes
    lora_adapters: dict[str, int] = field(default_factory=dict)
    pull_bytes_per_s: float = 0.0  # learned or measured; 0 when unknown
    download_bytes_per_s: float = 0.0
    disk_bytes_per_s: float = 0.0
    # Disk space from the report's `disk` (bytes); -1 when the report does not say.
    image_fs_free: int = -1  # the container runtime's image filesystem
    image_fs_total: int = -1
    model_cache_free: int = -1  # the volume that holds model weights
    model_cache_total: int = -1
    report_age_s: float | None = None  # None when the node has no report

    @property
    def has_report(self) -> bool:
        return self.report_age_s is not None
