"""Maintenance scripts: proto stub generation, the real-NVML check and its raw NVML probe."""
