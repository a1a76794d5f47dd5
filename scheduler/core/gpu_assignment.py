"""Which GPUs a pod holds: gpusched's recommendation against the kubelet's answer.

`gpusched.io/gpu-ids` is what gpusched recommended at bind. The NVIDIA device plugin and the
kubelet choose the devices; the node's agent reports which pod holds which GPU (PodResources,
`GpuInfo.holders`), and the snapshot counts a pod on those GPUs (`ClusterSnapshot.place_bound`).
`GpuAssignments` records the pods whose annotation names other GPUs than the kubelet says, and
counts each such disagreement once: a pod counts again only after the two sets change. The sets
are compared as sets (the annotation's order means nothing to the device plugin); with either
one empty (no report lists the pod yet, or gpusched did not bind it) there is nothing to compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.core.snapshot import ClusterSnapshot


@dataclass(frozen=True, slots=True)
class Disagreement:
    """GPU indices (sorted) the pod's annotation names, and those the kubelet says it holds."""

    annotation: tuple[int, ...]
    kubelet: tuple[int, ...]


class GpuAssignments:
    """Pods whose annotation and the kubelet disagree now (`disagreements`), and how many
    disagreements were seen since start (`total`, a counter: it never goes down).

    One instance outlives snapshots (ClusterState hands the same one to each snapshot it builds),
    so a relist that places every pod again does not count the same disagreement twice.
    """

    def __init__(self) -> None:
        self.disagreements: dict[str, Disagreement] = {}
        self.total = 0

    def observe(self, key: str, annotation: Iterable[int], kubelet: Iterable[int]) -> None:
        """Compare what pod `key`'s annotation names with what the kubelet says it holds."""
        said, holds = tuple(sorted(set(annotation))), tuple(sorted(set(kubelet)))
        if not said or not holds or said == holds:
            self.disagreements.pop(key, None)
            return
        seen = Disagreement(said, holds)
        if self.disagreements.get(key) != seen:
            self.disagreements[key] = seen
            self.total += 1

    def forget(self, key: str) -> None:
        """The pod is gone."""
        self.disagreements.pop(key, None)

    def retain(self, keys: Iterable[str]) -> None:
        """Keep the records of these pods only (after a relist)."""
        keep = set(keys)
        for key in [k for k in self.disagreements if k not in keep]:
            del self.disagreements[key]


def describe(snap: ClusterSnapshot, key: str) -> dict[str, list[int]] | None:
    """For /explain: the GPUs pod `key`'s annotation names, those the kubelet says it holds, and
    those the snapshot counts it on; None when the snapshot does not place the pod."""
    pod, placement = snap.pods.get(key), snap.placements.get(key)
    if pod is None or placement is None:
        return None
    return {
        "annotation": list(pod.gpu_ids),
        "kubelet": list(snap.kubelet_gpus(placement.node, key)),
        "counted": list(placement.gpus),
    }
