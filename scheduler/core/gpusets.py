"""Which GPUs of a node a pod would get, and how well they are connected.

For k whole GPUs the best set maximises the mean pair affinity (NVLink 1.0 down to cross-socket
0.0, see types.LINK_AFFINITY); every subset is tried when there are at most MAX_COMBINATIONS of
them, otherwise a greedy build from each starting GPU. One GPU (or a GPU share) goes where it
hurts the remaining sets least: the eligible GPU least connected to the other free GPUs, and for a
share, the one with the least free share left (best fit).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from math import comb

import numpy as np

from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

MAX_COMBINATIONS = 256


def eligible_gpus(snapshot: ClusterSnapshot, pod: PodRequest, nodes: np.ndarray | None) -> np.ndarray:
    """(len(nodes), G) mask of GPUs that could serve this pod on each given node (None: every node)."""
    picked = None if nodes is None or _every_node(snapshot, nodes) else nodes

    def rows(values: np.ndarray) -> np.ndarray:
        # Every node: the array itself. Else `take`, which gathers rows several times faster than
        # indexing with an array does.
        return values if picked is None else values.take(picked, axis=0)

    ok = rows(snapshot.gpu_valid) & rows(snapshot.gpu_healthy) & (rows(snapshot.gpu_milli_free) >= pod.milli_per_gpu)
    if pod.gpu_memory:
        ok &= rows(snapshot.gpu_memory) >= pod.gpu_memory
    if pod.gpu_models:
        ids = snapshot.model_ids(pod.gpu_models)
        ok &= np.isin(rows(snapshot.gpu_model), ids)
    return ok


def _every_node(snapshot: ClusterSnapshot, nodes: np.ndarray) -> bool:
    """Whether `nodes` is 0, 1, ..., N-1: every node of the snapshot, in order."""
    n = len(snapshot)
    return nodes.size == n > 0 and nodes[0] == 0 and bool((np.diff(nodes) == 1).all())


@lru_cache(maxsize=64)
def _combinations(g: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    combos = np.array(list(combinations(range(g), k)), dtype=np.intp).reshape(-1, k)
    pa, pb = zip(*combinations(range(k), 2), strict=True) if k > 1 else ((), ())
    return combos, np.array(pa, dtype=np.intp), np.array(pb, dtype=np.intp)


def best_sets(
    snapshot: ClusterSnapshot, pod: PodRequest, nodes: np.ndarray, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(quality in 0..1 or -1 where no set exists, chosen GPU indices (len(nodes), k), -1 padded)."""
    k = pod.gpus_needed
    n, g = eligible.shape
    chosen = np.full((n, max(k, 1)), -1, dtype=np.intp)
    quality = np.full(n, -1.0)
    if n == 0 or k == 0:
        return np.zeros(n), chosen
    counts = eligible.sum(axis=1)
    can = counts >= k
    if not can.any():
        return quality, chosen
    if k == 1:
        # Connectivity to the other free GPUs: lower is a better spot to give away (0 without links).
        connectivity: np.ndarray | float = 0.0
        if snapshot.link_class.max(initial=0) > 0 or snapshot.link_affinity[:1].any():
            free_whole = snapshot.gpu_milli_free[nodes] >= 1000
            connectivity = np.einsum("ngh,nh->ng", snapshot.link_affinity[nodes], free_whole.astype(np.float32))
        # A share: best fit first (least free share left), then the least connected GPU.
        cost = snapshot.gpu_milli_free[nodes] * 100.0 + connectivity if pod.gpu_milli else connectivity
        cost = np.where(eligible, cost, np.inf)
        pick = np.argmin(cost, axis=1)
        chosen[:, 0] = np.where(can, pick, -1)
        quality[can] = 1.0
        return quality, chosen
    # Nodes of one type with the same free GPUs have the same answer: solve each pattern once.
    bits = (eligible.astype(np.int64) << np.arange(g, dtype=np.int64)).sum(axis=1)
    key = snapshot.link_class[nodes] << np.int64(g) | bits
    patterns, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(patterns) < n:
        q, sets = _solve(snapshot.link_affinity[nodes[first]], eligible[first], k, can[first])
        return q[inverse.ravel()], sets[inverse.ravel()]
    return _solve(snapshot.link_affinity[nodes], eligible, k, can)


def _solve(affinity: np.ndarray, eligible: np.ndarray, k: int, can: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, g = eligible.shape
    if comb(g, k) <= MAX_COMBINATIONS:
        combos, pa, pb = _combinations(g, k)
        valid = eligible[:, combos].all(axis=2)  # (n, C)
        rows = np.arange(n)[:, None, None]
        pair_aff = affinity[rows, combos[None, :, pa], combos[None, :, pb]]  # (n, C, P)
        q = pair_aff.mean(axis=2)
        q = np.where(valid, q, -1.0)
        best = np.argmax(q, axis=1)
        quality = q[np.arange(n), best]
        chosen = np.where((quality >= 0)[:, None], combos[best], -1)
        return quality, chosen
    return _greedy_sets(affinity, eligible, k, can)


def _greedy_sets(affinity: np.ndarray, eligible: np.ndarray, k: int, can: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, g = eligible.shape
    best_q = np.full(n, -1.0)
    best_sets_ = np.full((n, k), -1, dtype=np.intp)
    rows = np.arange(n)
    for start in range(g):
        members = np.zeros((n, g), dtype=bool)
        members[:, start] = True
        picked = [np.full(n, start)]
        ok = eligible[:, start].copy()
        for _ in range(k - 1):
            gain = np.einsum("ngh,nh->ng", affinity, members.astype(np.float32))
            gain = np.where(eligible & ~members, gain, -np.inf)
            nxt = np.argmax(gain, axis=1)
            ok &= np.isfinite(gain[rows, nxt])
            members[rows, nxt] = True
            picked.append(nxt)
        sets = np.stack(picked, axis=1)
        pa, pb = zip(*combinations(range(k), 2), strict=True)
        q = affinity[rows[:, None], sets[:, list(pa)], sets[:, list(pb)]].mean(axis=1)
        q = np.where(ok & can, q, -1.0)
        better = q > best_q
        best_q = np.where(better, q, best_q)
        best_sets_[better] = sets[better]
    best_sets_[best_q < 0] = -1
    return best_q, best_sets_
