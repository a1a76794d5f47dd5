"""cuda (filter): the node's CUDA driver version is at least the pod's `gpusched.io/cuda`.

The driver's CUDA version comes from the GPUNodeReport (NVML's cudaDriverVersion) and is compared
as major.minor. Pods without the annotation pass everywhere.
Fallback: a node whose version is unknown (no report) does not meet any requirement.
"""

from __future__ import annotations

import numpy as np

from scheduler.core.framework import Cycle, FilterPlugin
from scheduler.core.quantity import version_code


def _show(code: int) -> str:
    return f"{code // 1000}.{code % 1000}"


class CudaDriver(FilterPlugin):
    name = "cuda"
    filter_per_node = True

    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        if not cycle.pod.cuda:
            return np.ones(nodes.size, dtype=bool)
        return cycle.snapshot.cuda[nodes] >= version_code(cycle.pod.cuda)

    def reason(self, cycle: Cycle, node: int) -> str:
        need = _show(version_code(cycle.pod.cuda))
        have = int(cycle.snapshot.cuda[node])
        if have < 0:
            return f"needs CUDA driver >= {need}, version unknown (no GPUNodeReport)"
        return f"needs CUDA driver >= {need}, node has {_show(have)}"
