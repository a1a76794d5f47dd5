"""pytest fixtures for end-to-end tests against a real control plane.

Register with ``pytest_plugins = ["localcluster.pytest_plugin"]`` in a conftest.py. Then::

    def test_placement(control_plane, kube_scheduler):
        control_plane.create_gpu_node("gpu-a", gpus=8)
        kube_scheduler(extender_url="http://127.0.0.1:8888/gpusched")  # or no URL: in-tree only
        ...

``control_plane`` (session scope) starts etcd and kube-apiserver once per session, without a
scheduler. ``kube_scheduler`` starts kube-scheduler for one test (arguments as
:meth:`LocalCluster.start_scheduler`), stops it afterwards and deletes every pod and node the
test left, so tests do not see each other's objects. Tests that call
``control_plane.start_scheduler()`` themselves must call ``stop_scheduler()`` in a ``finally``.
Everything is stopped at session end, also when tests fail or the session is interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from localcluster import k8s
from localcluster.cluster import LocalCluster

StartScheduler = Callable[..., LocalCluster]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """etcd + kube-apiserver shared by the whole session; logs are in ``control_plane.workdir``."""
    with LocalCluster(tmp_path_factory.mktemp("control-plane")) as cluster:
        yield cluster


@pytest.fixture
def kube_scheduler(control_plane: LocalCluster) -> Iterator[StartScheduler]:
    """Call it to start kube-scheduler for this test; it is stopped and the cluster emptied after."""

    def start(
        extender_url: str | None = None,
        *,
        extender_config: Mapping[str, Any] | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
    ) -> LocalCluster:
        control_plane.start_scheduler(extender_url, extender_config=extender_config, scheduler_config=scheduler_config)
        return control_plane

    try:
        yield start
    finally:
        control_plane.stop_scheduler()
        with control_plane.api_client() as api:
            k8s.reset(api)
