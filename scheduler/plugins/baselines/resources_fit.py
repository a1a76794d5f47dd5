"""resources-fit (filter): the node has the pod's CPU and memory requests free.

    fits = cpu_free >= pod cpu request  and  memory_free >= pod memory request

Free is the node's allocatable minus the requests of the pods the snapshot holds on it, as
kube-scheduler's NodeResourcesFit counts it. kube-scheduler runs this check itself before it calls
the extender, so gpusched's default config leaves it out; the simulator adds it to every policy it
replays (it stands in for kube-scheduler's own filters). No args.
Fallback: a node whose allocatable CPU or memory is unknown (0) fits only pods that request none.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle, FilterPlugin
from scheduler.core.quantity import format_bytes


class ResourcesFit(FilterPlugin):
    name = "resources-fit"

    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap, pod = cycle.snapshot, cycle.pod
        ok = snap.cpu_free[nodes] >= pod.cpu_milli
        if pod.memory:
            ok &= snap.memory_free[nodes] >= pod.memory
        return ok

    def reason(self, cycle: Cycle, node: int) -> str:
        snap, pod = cycle.snapshot, cycle.pod
        cpu = int(snap.cpu_free[node])
        if cpu < pod.cpu_milli:
            return f"needs {pod.cpu_milli / 1000:g} CPU, {max(cpu, 0) / 1000:g} free"
        free = int(snap.memory_free[node])
        return f"needs {format_bytes(pod.memory)} memory, {format_bytes(max(free, 0))} free"
