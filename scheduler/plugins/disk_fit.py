"""disk-fit (filter): the node has disk space for what the pod must fetch.

    image bytes to pull     + margin(image filesystem) <= image filesystem free bytes
    weights bytes to fetch  + margin(model cache)      <= model cache free bytes
    margin(disk)            = max(marginBytes, marginFraction x disk total bytes)

The bytes to fetch are those cold-start counts as missing (`cold_start.missing_bytes`): the pod's
images the node does not list, at the largest size any node reports (`unknownImageBytes` for an
image no node reports), and its weights (`gpusched.io/model-bytes`, else the largest any node
reports) less what the node's cache holds. Images land on the container runtime's image filesystem
and weights on the model cache volume, each as the node's GPUNodeReport states it (`spec.disk`).
A pod that would fill a disk fails to start or makes the kubelet evict pods and images, after
minutes of pulling; the margin keeps a node out of the kubelet's eviction range (imagefs.available
below 15 % by default, hence 10 % plus the pulls of pods already starting).

Args: `marginBytes` (number or quantity, default 1Gi), `marginFraction` (0..1 of the disk's total,
default 0.10), `unknownImageBytes` (default 0). Filter only, no score.
The reason names the sizes, e.g. "image filesystem: needs 15.0 GiB + 1.0 GiB margin, 9.0 GiB free".
Fallback: a node whose report states no figures for a disk (no report, an older agent) passes that
disk's check, and `cycle.notes["disk_fit"]` says so per node for /explain. The figures are read
from the snapshot's `disk_free` and `disk_total` arrays, and only for a pod that names an image or
weights: a pod that fetches nothing passes everywhere at no cost. Evicting pods does not
free image or cache space that kube-scheduler's preemption knows of: the rejection is not resolvable.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs, quantity
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, FilterPlugin
from scheduler.plugins.cold_start import Priors, Rate, missing_bytes

GiB = 2**30
UNCHECKED = "no disk figures in the node's report: {} not checked"


def _gib(value: float) -> str:
    return f"{value / GiB:.1f} GiB"


class DiskFitArgs(PluginArgs, frozen=True):
    margin_bytes: Rate = "1Gi"
    margin_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.10
    unknown_image_bytes: Rate = 0

    def __post_init__(self) -> None:
        if quantity(self.margin_bytes, "marginBytes") < 0:
            raise ValueError("marginBytes: must not be negative")
        if quantity(self.unknown_image_bytes, "unknownImageBytes") < 0:
            raise ValueError("unknownImageBytes: must not be negative")


class DiskFit(FilterPlugin):
    name = "disk-fit"
    filter_per_node = True  # the largest reported image size: ClusterSnapshot.catalog
    Args = DiskFitArgs

    def __init__(self, args: DiskFitArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.margin_bytes = quantity(args.margin_bytes, "marginBytes")
        self.margin_fraction = args.margin_fraction
        self.priors = Priors(unknown_image_bytes=int(quantity(args.unknown_image_bytes, "unknownImageBytes")))

    def _disks(self, cycle: Cycle, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bytes to fetch, free bytes, margin bytes) per disk (image filesystem, model cache) and
        node: three arrays of shape (2, len(nodes)); free is -1 where the report does not say."""
        snap = cycle.snapshot
        images, weights, _ = missing_bytes(snap, cycle.pod, nodes, self.priors)
        free, total = snap.disk_free[nodes].T, snap.disk_total[nodes].T
        margin = np.maximum(self.margin_bytes, self.margin_fraction * total)
        return np.stack([images, weights]), free, margin

    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        pod = cycle.pod
        if not (pod.model or (pod.images and any(i.strip() for i in pod.images))) or nodes.size == 0:
            return np.ones(nodes.size, dtype=bool)
        need, free, margin = self._disks(cycle, nodes)
        fetching = need > 0
        unknown = fetching & (free < 0)
        ok = ~fetching | (free < 0) | (need + margin <= free)
        if unknown.any():
            names = cycle.snapshot.names
            parts = np.where(unknown[0] & unknown[1], 0, np.where(unknown[0], 1, 2))
            what = ("image filesystem and model cache", "image filesystem", "model cache")
            at = np.flatnonzero(unknown.any(axis=0))
            # Worded only if the decision is explained: it would cost more than the filter.
            cycle.notes["disk_fit"] = lambda: {
                names[int(nodes[i])]: UNCHECKED.format(what[int(parts[i])]) for i in at.tolist()
            }
        return np.asarray(ok.all(axis=0))

    def reason(self, cycle: Cycle, node: int) -> str:
        need, free, margin = self._disks(cycle, np.array([node], dtype=np.intp))
        out = []
        for k, disk in enumerate(("image filesystem", "model cache")):
            n, f, m = float(need[k, 0]), float(free[k, 0]), float(margin[k, 0])
            if n > 0 and f >= 0 and n + m > f:
                out.append(f"{disk}: needs {_gib(n)} + {_gib(m)} margin, {_gib(f)} free")
        return "; ".join(out) or "disk space"
