"""The FGD evaluation protocol (Weng et al., USENIX ATC 2023) on the Alibaba GPU trace.

As simulations/data/alibaba-gpu-2023/README.md states it:
1. The cluster is the node list alone. 2. Pods arrive and never leave.
3. Inflation: keep the trace's pods; then draw pods at random with replacement and append them
   while the requested GPU total (sum of num_gpu * gpu_milli) stays within 1.3x the cluster's GPU
   capacity: a draw whose per-GPU share (gpu_milli) would take the running total past it stops
   the drawing; otherwise it is appended and num_gpu * gpu_milli is added.
4. Order: by name, then shuffled. The drawing and the shuffle use one generator seeded with the
   run's seed (numpy PCG64), so a seed always gives the same pods in the same order.
5. Placement: one pod at a time over every node through the core (`Framework.decide`, ties to the
   first node in file order); a pod that fits nowhere is dropped and never retried.
6. Scores: each policy's plugins (see policies.py).
7. Metric: after each arrival, arrived% = round(100 * arrived milli-GPU / capacity) (failed pods
   count as arrived) and alloc% = 100 * allocated milli-GPU / capacity; per integer arrived% the
   mean alloc% over its events. Unallocated GPU % = 100 - that mean at arrived% = 100.
8. The fragmentation policies' typical pods come from the trace before inflation (95 % coverage).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.core.fragmentation import TypicalPod, shape_of, typical_pods
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import NodeState
from scheduler.plugins import registry
from simulations import mixes, policies, traces
from simulations.traces import TracePod

INFLATION = 1.3
COVERAGE = 0.95


def capacity_milli(nodes: Sequence[NodeState]) -> int:
    return sum(n.gpu_count for n in nodes) * 1000


def inflate(
    pods: Sequence[TracePod], capacity: int, rng: np.random.Generator, ratio: float = INFLATION
) -> list[TracePod]:
    """The trace's pods plus random copies until the requested GPU reaches `ratio` x capacity."""
    out = list(pods)
    if not pods:
        return out
    limit = ratio * capacity
    total = sum(p.gpu_total for p in pods)
    copies = 0
    while True:
        pick = pods[int(rng.integers(len(pods)))]
        if total + pick.gpu_milli > limit:
            return out
        copies += 1
        out.append(
            TracePod(
                f"{pick.name}-copy-{copies:05d}",
                pick.cpu_milli,
                pick.memory_mib,
                pick.num_gpu,
                pick.gpu_milli,
                pick.gpu_spec,
            )
        )
        total += pick.gpu_total
        if pick.gpu_total == 0 and copies > 100 * len(pods):
            return out  # a trace without GPU requests never reaches the limit


def arrival_order(pods: Sequence[TracePod], rng: np.random.Generator) -> list[TracePod]:
    ordered = sorted(pods, key=lambda p: p.name)
    perm = rng.permutation(len(ordered))
    return [ordered[i] for i in perm]


def workload(pods: Sequence[TracePod], capacity: int, seed: int) -> list[TracePod]:
    """Protocol steps 3 and 4 for one seed."""
    rng = np.random.default_rng(seed)
    return arrival_order(inflate(pods, capacity, rng), rng)


def typical_of(pods: Sequence[TracePod]) -> tuple[TypicalPod, ...]:
    return typical_pods((shape_of(p.request()) for p in pods), COVERAGE)


def round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def allocation_curve(arrived: np.ndarray, allocated: np.ndarray, capacity: int) -> dict[int, float]:
    """Mean alloc% per integer arrived% (protocol step 7)."""
    arrived_pct = round_half_up(100.0 * arrived / capacity).astype(np.int64)
    alloc_pct = 100.0 * allocated / capacity
    sums = np.bincount(arrived_pct, weights=alloc_pct)
    counts = np.bincount(arrived_pct)
    return {int(k): float(sums[k] / counts[k]) for k in np.flatnonzero(counts)}


def unallocated_at(curve: dict[int, float], arrived_pct: int = 100) -> float:
    """100 - alloc% at the given arrived%; NaN when the workload never got there."""
    return 100.0 - curve[arrived_pct] if arrived_pct in curve else math.nan


@dataclass
class SeedResult:
    policy: str
    trace: str
    seed: int
    unallocated_gpu_pct: float
    pods: int
    placed: int
    failed: int
    seconds: float
    curve: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "trace": self.trace,
            "seed": self.seed,
            "unallocated_gpu_pct": self.unallocated_gpu_pct,
            "pods": self.pods,
            "placed": self.placed,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


def replay(
    nodes: Sequence[NodeState],
    pods: Sequence[TracePod],
    policy: str,
    seed: int,
    *,
    typical: Sequence[TypicalPod] | None = None,
    trace: str = "",
    progress: Callable[[int, int], None] | None = None,
    weights: Mapping[str, float] | None = None,
    config_data: Mapping[str, Any] | None = None,
) -> SeedResult:
    """One run of the protocol: place the seed's workload through the core under `policy`.

    `weights` adds or reweights score plugins of the policy; `config_data` replaces the policy's
    config altogether (a registry config, as scheduler/core/config.py reads it).
    """
    started = time.perf_counter()
    capacity = capacity_milli(nodes)
    order = workload(pods, capacity, seed)
    label = policy if config_data is not None else policies.canonical(policy)
    if config_data is None:
        typical = typical if typical is not None else typical_of(pods)
        config_data = policies.policy_config(policy, seed=seed, typical=typical, weights=weights)
    config = registry.config_from(config_data)
    framework = registry.build(config)
    snapshot = ClusterSnapshot(nodes)
    arrived = np.zeros(len(order), dtype=np.int64)
    allocated = np.zeros(len(order), dtype=np.int64)
    arrived_sum = allocated_sum = placed = 0
    for i, item in enumerate(order):
        pod = item.request()
        arrived_sum += item.gpu_total
        if framework.place_best(snapshot, pod)[1] is not None:
            allocated_sum += item.gpu_total
            placed += 1
        arrived[i] = arrived_sum
        allocated[i] = allocated_sum
        if progress is not None and (i % 500 == 0 or i == len(order) - 1):
            progress(i + 1, len(order))
    curve = allocation_curve(arrived, allocated, capacity)
    return SeedResult(
        policy=label,
        trace=trace,
        seed=seed,
        unallocated_gpu_pct=unallocated_at(curve),
        pods=len(order),
        placed=placed,
        failed=len(order) - placed,
        seconds=time.perf_counter() - started,
        curve=curve,
    )


def parse_seeds(text: str) -> list[int]:
    """ "42-51" -> 42..51; "42,45,50" -> those; "7" -> [7]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            raise ValueError(f"seeds: {part!r} is not a seed or a range such as 42-51") from exc
    if not seeds:
        raise ValueError("seeds: none given (for example 42-51)")
    return seeds


def summarize(results: Sequence[SeedResult]) -> dict[str, Any]:
    values = np.array([r.unallocated_gpu_pct for r in results], dtype=np.float64)
    return {
        "unallocated_gpu_pct_mean": float(values.mean()) if values.size else math.nan,
        "unallocated_gpu_pct_std": float(values.std()) if values.size else math.nan,
        "seconds_per_seed": float(np.mean([r.seconds for r in results])) if results else math.nan,
        "per_seed": [r.as_dict() for r in results],
    }


# ------------------------------------------------------------------ parallel runs
_LOADED: dict[tuple[str, str, str], tuple[list[NodeState], list[TracePod], tuple[TypicalPod, ...]]] = {}


def _load(
    nodes_csv: str, pods_csv: str, label: str = ""
) -> tuple[list[NodeState], list[TracePod], tuple[TypicalPod, ...]]:
    """The nodes, the pods and their typical pods; a mix's label (simulations/mixes.py) resamples
    the pods read from `pods_csv` (the default trace)."""
    mix = label if mixes.is_mix(label) else ""
    key = (nodes_csv, pods_csv, mix)
    if key not in _LOADED:
        pods = traces.load_pods(pods_csv)
        if mix:
            pods = mixes.load_mix(mix, pods)
        _LOADED[key] = (traces.load_nodes(nodes_csv), pods, typical_of(pods))
    return _LOADED[key]


def run_task(task: tuple[str, str, str, str, int]) -> SeedResult:
    """(trace label, nodes csv, pods csv, policy, seed) -> result; the unit of work of a process.
    A mix's label (simulations/mixes.py) resamples the pods csv."""
    label, nodes_csv, pods_csv, policy, seed = task
    nodes, pods, typical = _load(nodes_csv, pods_csv, label)
    return replay(nodes, pods, policy, seed, typical=typical, trace=label)


def run_many(
    tasks: Sequence[tuple[str, str, str, str, int]],
    jobs: int,
    on_done: Callable[[SeedResult], None] | None = None,
) -> list[SeedResult]:
    """Run tasks in `jobs` processes (1: in this process), in order of submission."""
    results: list[SeedResult] = []
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(run_task(task))
            if on_done:
                on_done(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(run_task, tasks, chunksize=1):
            results.append(result)
            if on_done:
                on_done(result)
    return results


def default_jobs() -> int:
    return max(os.cpu_count() or 1, 1)


def trace_tasks(
    trace_names: Sequence[str], policy_names: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, str, str, str, int]]:
    nodes_csv = str(traces.node_file())
    return [
        (trace, nodes_csv, str(traces.pod_file(mixes.BASE_TRACE if mixes.is_mix(trace) else trace)), policy, seed)
        for trace in trace_names
        for policy in policy_names
        for seed in seeds
    ]


def exists(path: str | Path) -> bool:
    return Path(path).is_file()
