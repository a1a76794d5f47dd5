"""gpusched's node agent: reads the node's GPUs (NVML), which pods hold them (kubelet PodResources)
and what is cached on disk, and publishes it as the node's GPUNodeReport.

Modules: :mod:`gpu_agent.nvml_reader` (NVML), :mod:`gpu_agent.fake_nvml` (a fake NVML library
for machines without a GPU), :mod:`gpu_agent.podresources` and :mod:`gpu_agent.cri` (gRPC
clients), :mod:`gpu_agent.inventory` (model and adapter caches, disk throughput),
:mod:`gpu_agent.report` (the report object), :mod:`gpu_agent.publisher` (server-side apply with
heartbeat and backoff), :mod:`gpu_agent.metrics` (Prometheus), :mod:`gpu_agent.agent` (the loop)
and :mod:`gpu_agent.cli` (``gpusched-agent``).

Importing the package, the NVML reader, the report and the CLI needs only the standard library
and pynvml; everything else is imported where it is used.
"""

__version__ = "0.1.0"
