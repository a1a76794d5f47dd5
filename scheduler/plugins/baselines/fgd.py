"""fgd (score): Fragmentation Gradient Descent as published (Weng et al., USENIX ATC 2023).

    score = int(100 * sigmoid((frag_before - frag_after) / 1000))

with frag the node's GPU fragmentation for the typical pods, in milli-GPU (FGD's measure, as
fragmentation.py defines it). The integer truncation is part of the policy: most nodes tie, and the tie rule
(the first node in snapshot order) then packs. For a GPU share every fitting GPU is tried and the
best kept, the first on ties; `choose_gpus` hands that GPU to bind, and whole GPUs are the first
fully free ones. A pod that requests nothing at all scores 100 everywhere.
Args: `typicalPods`, `coverage` (as fragmentation.py). Fallback: typical pods derived from the
snapshot's pods (as fragmentation.py). Range 0..100, integers. Scores and GPUs are kept per pod shape
and node, computed again only for nodes that changed (core/shape_cache.py).
"""

from __future__ import annotations

import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.fragmentation import TypicalPodsArgs, best_per_node
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.core.shape_cache import ShapeCache, ShapeValues, shape_key
from scheduler.plugins.common import first_fit_gpus


class Fgd(ScorePlugin, GpuChooser):
    name = "fgd"

    Args = TypicalPodsArgs

    def __init__(self, args: TypicalPodsArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.source = args.source(copies=False)

    def _values(self, cycle: Cycle, nodes: np.ndarray) -> ShapeValues:
        """Each node's score and, for a GPU share, its GPU; computed for the nodes that changed."""
        snap = cycle.snapshot
        state = self.source.state(snap)
        values, stale = ShapeCache.of(snap, self).stale(snap, shape_key(cycle.pod), nodes, (state,))
        if stale.size:
            pos, gpu, delta = state.deltas(cycle, stale)
            x = (delta / state.w_all) / 1000.0
            score = np.floor((1.0 / (1.0 + np.exp(-x))) * 100.0)
            if cycle.pod.gpu_milli:
                score, gpu = best_per_node(pos, gpu, score, stale.size, snap.max_gpus)
            values.store(snap, stale, score, gpu)
        return values

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        pod = cycle.pod
        if not (pod.wants_gpu or pod.cpu_milli or pod.memory):
            return np.full(nodes.size, 100.0)
        return self._values(cycle, nodes).value[nodes]

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return first_fit_gpus(cycle, node)
        gpu = int(self._values(cycle, np.array([node], dtype=np.intp)).gpu[node])
        return (gpu,) if gpu >= 0 else ()
