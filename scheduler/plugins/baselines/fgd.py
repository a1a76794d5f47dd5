"""fgd (score): Fragmentation Gradient Descent as published (Weng et al., USENIX ATC 2023).

    score = int(100 * sigmoid((frag_before - frag_after) / 1000))

with frag the node's GPU fragmentation for the typical pods, in milli-GPU (FGD's measure, as
fragmentation.py defines it). The integer truncation is part of the policy: most nodes tie, and the tie rule
(the first node in snapshot order) then packs. For a GPU share every fitting GPU is tried and the
best kept, the first on ties; `choose_gpus` hands that GPU to bind, and whole GPUs are the first
fully free ones. A pod that requests nothing at all scores 100 everywhere.
Args: `typicalPods`, `coverage` (as fragmentation.py). Fallback: typical pods derived from the
snapshot's pods (as fragmentation.py). Range 0..100, integers.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.fragmentation import TypicalPodsArgs, best_per_node
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.plugins.common import first_fit_gpus


class Fgd(ScorePlugin, GpuChooser):
    name = "fgd"

    Args = TypicalPodsArgs

    def __init__(self, args: TypicalPodsArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.source = args.source(copies=False)

    def _scores(
        self, cycle: Cycle, nodes: np.ndarray, every_gpu: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self.source.state(cycle.snapshot)
        pos, gpu, delta = state.deltas(cycle, nodes, every_gpu)
        x = (delta / state.w_all) / 1000.0
        return pos, gpu, np.floor((1.0 / (1.0 + np.exp(-x))) * 100.0)

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        pod = cycle.pod
        if not (pod.wants_gpu or pod.cpu_milli or pod.memory):
            return np.full(nodes.size, 100.0)
        pos, _, score = self._scores(cycle, nodes)
        return best_per_node(pos, score, nodes.size, 0.0)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return first_fit_gpus(cycle, node)
        _, gpu, score = self._scores(cycle, np.array([node], dtype=np.intp), every_gpu=True)
        return (int(gpu[int(np.argmax(score))]),) if gpu.size else ()
