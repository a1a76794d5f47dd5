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
A node's score and GPU depend only on the pod's shape and the node's own occupancy: they are kept
per shape (core/shape_cache.py) and computed again only for the nodes that changed since.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np

from scheduler.core.config import SchedulerConfig
from scheduler.core.fragmentation import FragmentationState, TypicalPodsArgs, best_per_node
from scheduler.core.framework import Cycle, GpuChooser, ScorePlugin
from scheduler.core.node_table import NodeTable
from scheduler.core.shape_cache import ShapeCache, ShapeValues, shape_key


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

    def _rows(
        self, cycle: Cycle, nodes: np.ndarray, states: tuple[FragmentationState, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in `nodes`, GPU or -1, score) per way to place the pod (FragmentationState.deltas)."""
        pos, gpu, delta = states[0].deltas(cycle, nodes)
        if len(states) > 1:  # same rows (they follow the pod's eligible GPUs), same weights
            delta = 0.5 * (delta + states[1].deltas(cycle, nodes)[2])
        score = 50.0 + 50.0 * np.minimum(np.maximum(delta * (1.0 / (states[0].w_all * self.scale)), -1.0), 1.0)
        if self.order_span:
            rank = NodeTable.of(cycle.snapshot).fill_rank[nodes[pos]]
            score += self.order_span * (1.0 - rank / len(cycle.snapshot))
        return pos, gpu, score * (100.0 / (100.0 + self.order_span))

    def _values(self, cycle: Cycle, nodes: np.ndarray) -> ShapeValues:
        """Each node's score and, for a GPU share, its GPU; computed for the nodes that changed."""
        snap = cycle.snapshot
        states = tuple([source.state(snap) for source in self.sources])
        values, stale = ShapeCache.of(snap, self).stale(snap, shape_key(cycle.pod), nodes, states)
        if stale.size:
            pos, gpu, score = self._rows(cycle, stale, states)
            if cycle.pod.gpu_milli:
                free = snap.gpu_milli_free.take(stale, axis=0)
                score, gpu = best_per_node(pos, gpu, score, stale.size, snap.max_gpus, free)
            values.store(snap, stale, score, gpu)
        return values

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        return self._values(cycle, nodes).value[nodes]

    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        if not cycle.pod.gpu_milli:
            return None
        gpu = int(self._values(cycle, np.array([node], dtype=np.intp)).gpu[node])
        return (gpu,) if gpu >= 0 else ()
