"""A real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler) for tests and demos.

Binaries are built from Go modules by :mod:`localcluster.build`; :class:`LocalCluster` runs them
on loopback; :mod:`localcluster.k8s` creates GPU nodes and applies manifests;
:mod:`localcluster.pytest_plugin` provides the ``control_plane`` fixture.
"""

from localcluster.cluster import ClusterError, LocalCluster
from localcluster.versions import ETCD_VERSION, K8S_VERSION

__all__ = ["ETCD_VERSION", "K8S_VERSION", "ClusterError", "LocalCluster"]
