"""fragmentation (score): place the pod where it destroys the least GPU that the next pods could use.

The typical pods and the two measures (FGD's and the multi-copy one) are defined in
scheduler/core/fragmentation.py.

Score. delta = frag(before) - frag(after placing the pod), exact, in milli-GPU; by default the mean
of the two measures' deltas (`measure: both`). FGD scores int(100 * sigmoid(delta / 1000)), which
merges most nodes into ties that name order then breaks, so FGD packs first-fit by accident. Here
the packing is explicit and bounded:

    raw   = 50 + 50 * clip(delta / scale, -1, 1)
    order = 50 * packDelta / scale * (1 - rank / nodes)                      (first fit)
    score = 100 * (raw + order) / (100 + 50 * packDelta / scale)

where rank is the node's place in a fixed first-fit order: the smallest GPUs (memory) first, then
snapshot order. A node earlier in that order wins only against placements within `packDelta`
milli-GPU of fragmentation (default 400), which keeps later nodes whole for large pods and gangs.
For a GPU share every fitting GPU is tried and the best kept (on ties the one with the least free
share, then the first); `choose_gpus` hands that GPU to bind. Whole GPUs are left to the core's GPU
sets (NVLink quality): on a node of one GPU model, which free GPUs go changes neither measure.

Why both measures, and a scale of 8000. With the multi-copy measure alone and scale 1000, gpusched
left fewer GPUs unallocated than FGD on the FGD paper's traces, where about 1 % of GPU pods ask for
several GPUs, but more on mixes where 30-50 % do (`gpusched-sim fgd-table`, the gs-multigpu rows).
Two causes. (1) A scale of 1000 clipped every placement that destroys more than one GPU of typical
capacity to the same raw score, so where an 8-GPU pod's delta is several thousand, breaking a whole
8-GPU node and breaking a 2-GPU node tied and first fit decided; a scale of 8000 (one whole node of
the largest kind) keeps them apart. (2) The multi-copy measure charges a placement for every free
GPU left out of whole copies and for shares stranded by exact division; FGD's asks only whether one
more typical pod still fits, which on multi-GPU-heavy mixes judges better which nodes to keep whole,
while multi-copy judges shares and CPU-heavy pods better. In the runs compared (seeds 42 and 43 of
the default, gpushare40 and gs-multigpu traces), the mean of the two deltas left no more GPUs
unallocated than the better of the two alone, and fewer than each on the default trace and on
gpushare40. `packDelta` 400 (was 240) packs slightly harder, which the bundled traces favour.

In gpusched's default policy (scheduler/core/config.py) this plugin has weight 4, and
gpu-memory-packing's node-count term, which this measure replaces, is off.

Args: `typicalPods` (list of {cpu: milli-CPU, gpus, gpuMilli (per GPU, 1000 = whole), models,
weight}), `coverage` (default 0.95), `scale` (milli-GPU, default 8000), `packDelta` (milli-GPU,
default 400; 0 turns first fit off), `measure` (`both` (default), `multi-copy` or `fgd`). Range 0..100.
Fallback: without `typicalPods` the typical pods come from the pods the snapshot holds (for the
extender: the pods running in the cluster), derived again whenever their number has halved or
doubled; with no GPU pod among them, one whole GPU is the typical pod. Before and after are summed
the same way, term by term, so a placement that changes nothing has a delta of exactly 0.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.fragmentation import FragmentationState, TypicalPodsArgs, best_per_node
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.core.node_table import NodeTable
from scheduler.core.types import PodRequest


class FragmentationArgs(TypicalPodsArgs, frozen=True):
    scale: Annotated[float, msgspec.Meta(gt=0)] = 8000.0
    pack_delta: Annotated[float, msgspec.Meta(ge=0)] = 400.0
    measure: Literal["multi-copy", "fgd", "both"] = "both"


class Fragmentation(ScorePlugin, GpuChooser):
    name = "fragmentation"
    Args = FragmentationArgs

    def __init__(self, args: FragmentationArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        # One source per measure: "both" averages the two deltas.
        self.sources = [
            args.source(copies=m == "multi-copy") for m in ("multi-copy", "fgd") if args.measure in (m, "both")
        ]
        self.source = self.sources[0]
        self.scale = args.scale
        self.pack_delta = args.pack_delta
        self.order_span = 50.0 * self.pack_delta / self.scale
        # The rows of the last score(), for choose_gpus right after it (same pod, nothing changed since).
        self._last: tuple[FragmentationState, int, PodRequest, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
        self._last = None

    def _scores(
        self, cycle: Cycle, nodes: np.ndarray, every_gpu: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self.source.state(cycle.snapshot)
        pos, gpu, delta = state.deltas(cycle, nodes, every_gpu)
        if len(self.sources) > 1:  # same rows (they follow the pod's eligible GPUs), same weights
            delta = 0.5 * (delta + self.sources[1].state(cycle.snapshot).deltas(cycle, nodes, every_gpu)[2])
        score = 50.0 + 50.0 * np.minimum(np.maximum(delta * (1.0 / (state.w_all * self.scale)), -1.0), 1.0)
        if self.order_span:
            rank = NodeTable.of(cycle.snapshot).fill_rank[nodes[pos]]
            score += self.order_span * (1.0 - rank / len(cycle.snapshot))
        return pos, gpu, score * (100.0 / (100.0 + self.order_span))

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        pos, gpu, score = self._scores(cycle, nodes)
        if cycle.pod.gpu_milli:
            state = self.source.state(cycle.snapshot)
            self._last = (state, state.generation, cycle.pod, nodes, pos, gpu, score)
        return best_per_node(pos, score, nodes.size, 0.0)

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return None
        state = self.source.state(cycle.snapshot)
        state.refresh()
        last, gpu = self._last, np.zeros(0, dtype=np.intp)
        if last is not None and last[0] is state and last[1] == state.generation and last[2] is cycle.pod:
            at = np.flatnonzero(last[3] == node)
            rows = last[4] == (at[0] if at.size else -1)
            gpu, score = last[5][rows], last[6][rows]
        if not gpu.size or (gpu < 0).any():  # not scored just now, or one row per distinct share
            _, gpu, score = self._scores(cycle, np.array([node], dtype=np.intp), every_gpu=True)
        if not gpu.size:
            return ()
        tied = gpu[score >= score.max() - 1e-9]  # equally good: the tightest fit, then the first
        return (int(tied[int(np.argmin(cycle.snapshot.gpu_milli_free[node, tied]))]),)
