"""A real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler) for tests and demos.

Binaries are built from Go modules by :mod:`localcluster.build`; :class:`LocalCluster` runs them
on loopback; :mod:`localcluster.k8s` creates GPU nodes and applies manifests;
:mod:`localcluster.kwok` adds fake GPU nodes from a scenario file whose pods run (KWOK and
kube-controller-manager), :mod:`localcluster.reporter` their GPUNodeReports;
:mod:`localcluster.pytest_plugin` provides the ``control_plane`` fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from localcluster.versions import ETCD_VERSION, K8S_VERSION

if TYPE_CHECKING:
    from localcluster.cluster import ClusterError, LocalCluster

__all__ = ["ETCD_VERSION", "K8S_VERSION", "ClusterError", "LocalCluster"]


def __getattr__(name: str) -> object:
    # Lazy, so that building (python -m localcluster.build) works without the kubernetes client.
    if name in ("ClusterError", "LocalCluster"):
        from localcluster import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module 'localcluster' has no attribute {name!r}")
