"""cold-start (score): how soon the pod would be ready on the node, from what the node must fetch and load.

    seconds = missing image bytes   / pull throughput
            + missing weights bytes / download throughput
            + weights bytes         / disk throughput
    score   = 100 * halfScoreSeconds / (halfScoreSeconds + seconds)

Images are the pod's container images (each counted once), compared in canonical form
(core/images.py); an image's size is the largest any node reports for it (the Node's `status.images`
or its GPUNodeReport), and it is missing on a node that does not list it. Weights are the pod's
`gpusched.io/model`; their size is `gpusched.io/model-bytes`, else the largest any node reports; the
missing part is that size less what the node's cache holds. Loading from local disk is paid on every
node, cached or not.

The score falls smoothly with the seconds: 100 when ready at once, 50 at `halfScoreSeconds`, 25 at
three times that. It never saturates, so between two cold nodes the faster one still wins, and it is
absolute, so a few seconds' difference between two warm nodes moves it by only a point or two.

Throughputs per node, in order of precedence: pull throughput learned from kubelet's Pulled events
(scheduler/state/pull_throughput.py: `PullThroughput.apply` sets it on the NodeState from which the
snapshot's `pull_bw` is read), else the bandwidth the node's GPUNodeReport measured, else the prior
(`pullBytesPerSecond` 100 MB/s, `downloadBytesPerSecond` 200 MB/s, `diskBytesPerSecond` 1 GB/s); a
rate under 1 byte/s counts as not measured.

The predicted seconds of every scored node go into `cycle.notes["cold_start_seconds"]` (node name ->
seconds, one decimal) for /explain, when the pod needs anything at all. `predicted_seconds` is the
same computation for the simulator; `missing_bytes` (the bytes a node lacks) is shared with the
disk-fit filter.

Args: `pullBytesPerSecond`, `downloadBytesPerSecond`, `diskBytesPerSecond` (numbers or quantities
such as 100M), `unknownImageBytes` (default 0), `halfScoreSeconds` (default 120). Range 0..100.
Fallback: an image no node reports counts as `unknownImageBytes`; weights of unknown size count as 0
bytes; a node without a report has an empty weights cache and the priors; a stale report is used as
it stands (the freshness filter decides whether to trust the node at all). A pod that needs no image
or weights bytes scores 100 everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs, quantity
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.core.images import normalize_image
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Priors:
    """Throughputs (bytes per second) for nodes that have measured none, and the size of unknown images."""

    pull: float = 100 * MB
    download: float = 200 * MB
    disk: float = 1000 * MB
    unknown_image_bytes: int = 0


DEFAULT_PRIORS = Priors()


def _largest(holders: Mapping[int, int]) -> int:
    return max(holders.values(), default=0)


def _held(holders: Mapping[int, int], n: int, cap: int) -> np.ndarray:
    """Bytes each of the n nodes holds, capped at `cap`."""
    out = np.zeros(n, dtype=np.float64)
    if holders:
        idx = np.fromiter(holders.keys(), dtype=np.intp, count=len(holders))
        out[idx] = np.minimum(np.fromiter(holders.values(), dtype=np.float64, count=len(holders)), cap)
    return out


def _measured(rates: np.ndarray, prior: float) -> np.ndarray:
    """Measured rates, with the prior where none was measured (below 1 byte/s counts as none)."""
    return np.where(rates >= 1.0, rates, prior)


def needed_bytes(snapshot: ClusterSnapshot, pod: PodRequest, priors: Priors | None = None) -> tuple[float, float]:
    """(image bytes, weights bytes) the pod needs in all, whatever the node."""
    priors = priors or DEFAULT_PRIORS
    images = {normalize_image(i) for i in pod.images if i.strip()}
    image_bytes = 0.0
    for image in images:
        image_bytes += _largest(snapshot.images.get(image, {})) or priors.unknown_image_bytes
    weights = 0.0
    if pod.model:
        weights = float(pod.model_bytes or _largest(snapshot.models.get(pod.model, {})))
    return image_bytes, weights


def missing_bytes(
    snapshot: ClusterSnapshot, pod: PodRequest, nodes: np.ndarray, priors: Priors | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(image bytes to pull, weights bytes to download) per node in `nodes`, and the weights' size.

    What the node does not hold already; the disk-fit filter checks the same bytes against free space.
    """
    priors = priors or DEFAULT_PRIORS
    nodes = np.asarray(nodes, dtype=np.intp)
    n = len(snapshot)
    missing_images = np.zeros(n, dtype=np.float64)
    for image in {normalize_image(i) for i in pod.images if i.strip()}:
        holders = snapshot.images.get(image, {})
        size = _largest(holders) or priors.unknown_image_bytes
        if size:
            missing = np.full(n, float(size))
            if holders:
                missing[np.fromiter(holders.keys(), dtype=np.intp, count=len(holders))] = 0.0
            missing_images += missing
    weights = 0
    cached = np.zeros(n, dtype=np.float64)
    if pod.model:
        holders = snapshot.models.get(pod.model, {})
        weights = pod.model_bytes or _largest(holders)
        cached = _held(holders, n, weights)
    return missing_images[nodes], weights - cached[nodes], float(weights)


def predicted_seconds(
    snapshot: ClusterSnapshot, pod: PodRequest, nodes: np.ndarray, priors: Priors | None = None
) -> np.ndarray:
    """Seconds until the pod's images are pulled and its weights fetched and loaded, per node in `nodes`."""
    priors = priors or DEFAULT_PRIORS
    nodes = np.asarray(nodes, dtype=np.intp)
    images, weights_missing, weights = missing_bytes(snapshot, pod, nodes, priors)
    pull = _measured(snapshot.pull_bw[nodes], priors.pull)
    download = _measured(snapshot.download_bw[nodes], priors.download)
    disk = _measured(snapshot.disk_bw[nodes], priors.disk)
    seconds: np.ndarray = images / pull
    if weights:
        seconds = seconds + weights_missing / download + weights / disk
    return seconds


Rate = float | Annotated[str, msgspec.Meta(pattern=r"^\S+$")]  # a number or a quantity such as "100M"


class ColdStartArgs(PluginArgs, frozen=True):
    pull_bytes_per_second: Rate = DEFAULT_PRIORS.pull
    download_bytes_per_second: Rate = DEFAULT_PRIORS.download
    disk_bytes_per_second: Rate = DEFAULT_PRIORS.disk
    unknown_image_bytes: Rate = DEFAULT_PRIORS.unknown_image_bytes
    half_score_seconds: Annotated[float, msgspec.Meta(gt=0)] = 120.0

    def __post_init__(self) -> None:
        self.priors()  # quantities parse and are in range, or start-up stops here

    def priors(self) -> Priors:
        priors = Priors(
            pull=quantity(self.pull_bytes_per_second, "pullBytesPerSecond"),
            download=quantity(self.download_bytes_per_second, "downloadBytesPerSecond"),
            disk=quantity(self.disk_bytes_per_second, "diskBytesPerSecond"),
            unknown_image_bytes=int(quantity(self.unknown_image_bytes, "unknownImageBytes")),
        )
        if min(priors.pull, priors.download, priors.disk) <= 0:
            raise ValueError("throughputs must be positive")
        if priors.unknown_image_bytes < 0:
            raise ValueError("unknownImageBytes must not be negative")
        return priors


class ColdStart(ScorePlugin):
    name = "cold-start"
    score_per_node = True  # the largest reported sizes: ClusterSnapshot.catalog

    Args = ColdStartArgs

    def __init__(self, args: ColdStartArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.priors = args.priors()
        self.half = args.half_score_seconds

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        if not any(needed_bytes(snap, pod, self.priors)):
            return np.full(nodes.size, 100.0)  # nothing to fetch or load: 0 seconds everywhere
        seconds = predicted_seconds(snap, pod, nodes, self.priors)
        names = snap.names
        # Worded only if the decision is explained (a dict over every node costs more than the score).
        cycle.notes["cold_start_seconds"] = lambda: {
            names[i]: s for i, s in zip(nodes.tolist(), np.round(seconds, 1).tolist(), strict=True)
        }
        return 100.0 * self.half / (self.half + seconds)
