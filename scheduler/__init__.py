"""gpusched: GPU-aware placement for Kubernetes."""
