"""locality (score): the pod's container images and model weights already on the node.

    score = 100 * bytes present / bytes needed

Bytes needed sums, over the pod's images and its `gpusched.io/model`, the size of each as the
largest any node reports (weights: `gpusched.io/model-bytes` when given). Images come from the
node's `status.images` and the report; weights from the report's cache inventory.
Range 0..100. Fallback: when nothing the pod needs is known anywhere, 0 on every node.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.core.images import normalize_image


def present_and_needed(
    table: dict[str, dict[int, int]], keys: tuple[str, ...], nodes: np.ndarray, n: int, sizes: dict[str, int]
) -> tuple[np.ndarray, float]:
    """Bytes of `keys` present on each of `nodes`, and the bytes needed in all."""
    present = np.zeros(n, dtype=np.float64)
    needed = 0.0
    for key in keys:
        holders = table.get(key)
        if not holders:
            needed += sizes.get(key) or 0
            continue
        # Whole arrays, not a loop per holder: a common image is on thousands of nodes.
        held = np.fromiter(holders.values(), dtype=np.float64, count=len(holders))
        size = sizes.get(key) or float(held.max())
        needed += size
        present[np.fromiter(holders.keys(), dtype=np.intp, count=len(holders))] += (
            np.minimum(held, size) if size else held
        )
    return present[nodes], needed


class Locality(ScorePlugin):
    name = "locality"
    score_per_node = True  # the largest reported sizes: ClusterSnapshot.catalog

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        if not (pod.images or pod.model):
            return np.zeros(nodes.size)  # nothing needed: the fallback below, without building it
        n = len(snap)
        images = tuple(normalize_image(i) for i in pod.images)
        have_img, need_img = present_and_needed(snap.images, images, nodes, n, {})
        model = (pod.model,) if pod.model else ()
        have_w, need_w = present_and_needed(snap.models, model, nodes, n, {pod.model: pod.model_bytes})
        needed = need_img + need_w
        if needed <= 0:
            return np.zeros(nodes.size)
        return 100.0 * (have_img + have_w) / needed
