"""How a bind reaches the cluster: through the API server, or (offline mode) nowhere at all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scheduler.state.kube import Kube, KubeError


class ApiBinder:
    """Creates the pod's Binding; annotations on the Binding are copied onto the pod by the API server."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            pod: Mapping[str, Any] = self.kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
            return pod
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def annotate(self, namespace: str, name: str, uid: str, annotations: dict[str, str]) -> None:
        """Merge `annotations` into the pod (refused if the pod was replaced: uid precondition)."""
        body = (
            {"metadata": {"uid": uid, "annotations": annotations}}
            if uid
            else {"metadata": {"annotations": annotations}}
        )
        self.kube.patch(f"/api/v1/namespaces/{namespace}/pods/{name}", body, "application/merge-patch+json")

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self.kube.post(f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body)


class OfflineBinder:
    """Offline mode: a bind only updates gpusched's own view (the assume-cache keeps the pod placed
    for good); the pods gpusched knows are those the filter verb saw (ExtenderService offline)."""

    def __init__(self) -> None:
        self.bound: dict[str, str] = {}
        self.annotations: dict[str, dict[str, str]] = {}

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    def annotate(self, namespace: str, name: str, uid: str, annotations: dict[str, str]) -> None:
        self.annotations.setdefault(f"{namespace}/{name}", {}).update(annotations)

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        self.bound[f"{namespace}/{name}"] = node
