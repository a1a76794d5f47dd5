"""DeepSpeed training workload: `launch` turns a pod's index and gpusched's plan into torchrun
arguments, `train` is the per-process entrypoint torchrun starts."""
