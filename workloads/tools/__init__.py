"""Helpers around the workloads: model files for caches and tests, and the GPU check."""
