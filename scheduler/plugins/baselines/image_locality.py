"""image-locality (score): kube-scheduler's ImageLocality formula, unchanged.

    sum   = sum over the pod's container images present on the node of
            int(image bytes * nodes that have the image / all nodes)
    sum   = clamp(sum, 23 MiB, 1000 MiB * containers)
    score = 100 * (sum - 23 MiB) // (1000 MiB * containers - 23 MiB)

The spread factor damps images that every node already has. Images come from the node's
`status.images` and its GPUNodeReport (the snapshot's image table); references are compared in
canonical form. Part of the simulator's kube-default-like baseline (gpusched itself uses
locality.py, which also counts model weights). No args. Range 0..100, integers.
Fallback: a pod without images, or images no node has, scores 0 everywhere.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle, ScorePlugin
from scheduler.core.images import normalize_image

MB = 1024 * 1024
MIN_THRESHOLD = 23 * MB
MAX_CONTAINER_THRESHOLD = 1000 * MB


class ImageLocality(ScorePlugin):
    name = "image-locality"

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        n = len(snap)
        total = np.zeros(n, dtype=np.int64)
        for image in pod.images:
            holders = snap.images.get(normalize_image(image), {})
            if not holders:
                continue
            spread = len(holders) / n
            for node, size in holders.items():
                total[node] += int(size * spread)
        containers = max(len(pod.images), 1)
        top = MAX_CONTAINER_THRESHOLD * containers
        clamped = np.clip(total[nodes], MIN_THRESHOLD, top)
        return (100 * (clamped - MIN_THRESHOLD) // (top - MIN_THRESHOLD)).astype(np.float64)
