"""The one place that pins what the local control plane is built from."""

from __future__ import annotations

K8S_VERSION = "v1.37.2"
"""k8s.io/kubernetes release that provides kube-apiserver and kube-scheduler."""

ETCD_VERSION = "v3.7.0"
"""go.etcd.io/etcd/server/v3 release; matches the etcd client that K8S_VERSION requires."""

KWOK_VERSION = "v0.8.0"
"""sigs.k8s.io/kwok release whose ``kwok`` controller plays the kubelet of every fake node. It is
built from its own module (its own client-go), not from ``localcluster/go``."""


def staging_version(k8s_version: str = K8S_VERSION) -> str:
    """Version of the k8s.io staging modules (k8s.io/api etc.) released with ``k8s_version``.

    Kubernetes v1.N.M publishes its staging modules as v0.N.M.
    """
    major, minor, patch = k8s_version.lstrip("v").split(".", 2)
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {k8s_version!r}")
    return f"v0.{minor}.{patch}"


def cache_key() -> str:
    """Directory name under the binary cache; changes whenever a pinned version does."""
    return f"{K8S_VERSION}-{ETCD_VERSION}"
