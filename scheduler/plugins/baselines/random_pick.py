"""random (score): one feasible node, drawn uniformly at random, scores 100; the others 0.

The Random baseline of the FGD paper. Draws come from a generator seeded with the `seed` arg
(default 0), one draw per scheduling cycle, so a replay is reproducible. Inside the node a GPU share
goes to a fitting GPU drawn at random (`choose_gpus`); whole GPUs are the first fully free ones.
Args: `seed`. Range 0 or 100. Fallback: none needed (uses no node data).
"""

from __future__ import annotations

import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.plugins.common import first_fit_gpus


class RandomArgs(PluginArgs, frozen=True):
    seed: int = 0


class RandomPick(ScorePlugin, GpuChooser):
    name = "random"

    Args = RandomArgs

    def __init__(self, args: RandomArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.rng = np.random.default_rng(args.seed)

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        out = np.zeros(nodes.size)
        if nodes.size:
            out[int(self.rng.integers(nodes.size))] = 100.0
        return out

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return first_fit_gpus(cycle, node)
        fitting = np.flatnonzero(cycle.eligible(np.array([node], dtype=np.intp))[0])
        return (int(fitting[int(self.rng.integers(fitting.size))]),) if fitting.size else ()
