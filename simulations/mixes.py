"""gpusched's own multi-GPU-heavy workload mixes, resampled from the Alibaba default trace.

The bundled traces are the FGD paper's; in all of them about 1 % of GPU pods ask for several
GPUs. These mixes are gpusched's own (not in the paper, so no published values) and test the
policy where a large share of pods ask for 2-8 GPUs:

    gs-multigpu30   30 % of GPU pods ask for 2, 4 or 8 GPUs
    gs-multigpu40   40 %
    gs-multigpu50   50 %

Construction, from the default trace's pods and one generator (numpy PCG64) seeded per mix:
1. CPU-only pods are kept as they are.
2. GPU pods are drawn with replacement, a multi-GPU pod (one of the trace's own pods of 2-8 GPUs)
   whenever the multi-GPU count is below `share` x (GPU pods drawn + 1), otherwise a single-GPU
   pod (a whole GPU or a share), so the share holds at every prefix.
3. Drawing stops once the requested GPU total (sum of num_gpu x gpu_milli) reaches the default
   trace's: the mix asks for the same GPU as the trace, in fewer, larger pods.
Draws are named `<template>-mix-NNNNN`, so the protocol's name ordering and shuffle apply as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulations.traces import TraceError, TracePod

BASE_TRACE = "default"


@dataclass(frozen=True, slots=True)
class Mix:
    share: float  # of GPU pods that ask for 2..8 GPUs
    seed: int


MIXES: dict[str, Mix] = {
    "gs-multigpu30": Mix(0.30, 30),
    "gs-multigpu40": Mix(0.40, 40),
    "gs-multigpu50": Mix(0.50, 50),
}


def is_mix(name: str) -> bool:
    return name in MIXES


def multi_gpu_share(pods: Sequence[TracePod]) -> float:
    """Share of GPU pods that ask for 2..8 whole GPUs."""
    gpu = [p for p in pods if p.gpu_total > 0]
    return sum(2 <= p.num_gpu <= 8 for p in gpu) / len(gpu) if gpu else 0.0


def resample(pods: Sequence[TracePod], share: float, seed: int) -> list[TracePod]:
    """The mix of the module docstring: same GPU demand as `pods`, `share` of GPU pods multi-GPU."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share of multi-GPU pods must be in [0, 1), not {share}")
    multi = [p for p in pods if p.gpu_total > 0 and 2 <= p.num_gpu <= 8]
    single = [p for p in pods if p.gpu_total > 0 and p.num_gpu == 1]
    if (share > 0 and not multi) or (share < 1 and not single):
        raise TraceError("the trace has no pods of 2-8 GPUs or no single-GPU pods to resample from")
    out = [p for p in pods if p.gpu_total == 0]
    target = sum(p.gpu_total for p in pods)
    rng = np.random.default_rng(seed)
    total = drawn = n_multi = 0
    while total < target:
        take_multi = n_multi < share * (drawn + 1)
        pool = multi if take_multi else single
        pick = pool[int(rng.integers(len(pool)))]
        drawn += 1
        n_multi += take_multi
        total += pick.gpu_total
        out.append(
            TracePod(
                f"{pick.name}-mix-{drawn:05d}",
                pick.cpu_milli,
                pick.memory_mib,
                pick.num_gpu,
                pick.gpu_milli,
                pick.gpu_spec,
            )
        )
    return out


def load_mix(name: str, base: Sequence[TracePod]) -> list[TracePod]:
    """The named mix built from the default trace's pods `base`."""
    if name not in MIXES:
        raise TraceError(f"unknown mix {name!r} (known: {', '.join(MIXES)})")
    mix = MIXES[name]
    return resample(base, mix.share, mix.seed)
