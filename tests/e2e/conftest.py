"""Fixtures for tests against the real control plane.

Imported rather than listed in ``pytest_plugins``, which pytest accepts only in the rootdir's
conftest.py.
"""

from localcluster.pytest_plugin import control_plane, kube_scheduler
from tests.e2e.gpusched_env import gpusched

__all__ = ["control_plane", "gpusched", "kube_scheduler"]
