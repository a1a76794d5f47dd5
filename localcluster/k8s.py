"""API helpers for a cluster without kubelets: fake GPU nodes, namespaces, manifests, CRDs.

Requests go through the kubernetes client's ApiClient (connection, TLS, token auth) but send
and return plain JSON dicts, so callers never depend on the client's model classes.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import config as kube_config
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

FIELD_MANAGER = "gpusched-localcluster"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}

Manifest = Path | str | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def api_client(kubeconfig: Path) -> ApiClient:
    """An ApiClient configured from a kubeconfig file."""
    return kube_config.new_client_from_config(config_file=str(kubeconfig))


def request(
    api: ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    timeout: float = 30.0,
) -> Any:
    """Send one request and return the decoded JSON body; raise ApiException on an error status."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    serialized = api.param_serialize(
        method.upper(),
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized, _request_timeout=timeout)
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
    return json.loads(data) if data else None


def watch(
    api: ApiClient, path: str, *, query: Mapping[str, str] | None = None, timeout: float = 60.0
) -> Iterator[dict[str, Any]]:
    """Watch events (``{"type": "ADDED"|"MODIFIED"|"DELETED"|..., "object": {...}}``) of the
    collection at ``path``, for at most ``timeout`` seconds (the server ends the watch then).

    Pass ``{"resourceVersion": rv}`` from an earlier list to see every change since it: unlike
    polling, a watch never misses a state an object passed through quickly.
    """
    params = {**(query or {}), "watch": "true", "timeoutSeconds": str(max(int(timeout), 1))}
    serialized = api.param_serialize(
        "GET",
        path,
        query_params=list(params.items()),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized, _request_timeout=timeout + 30)
    if not 200 <= response.status <= 299:
        data = response.read()
        raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
    raw = response.response  # urllib3's response, not read yet: it yields one event per line
    try:
        for line in raw:
            if line.strip():
                yield json.loads(line)
    finally:
        raw.release_conn()


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_namespace(api: ApiClient, name: str) -> None:
    """Create a namespace; an existing one is left as is."""
    try:
        request(
            api,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
    except ApiException as exc:
        if exc.status != 409:
            raise


def _ready_condition(ready: bool) -> dict[str, str]:
    now = _now()
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "set by localcluster",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def create_gpu_node(
    api: ApiClient,
    name: str,
    gpus: int,
    labels: Mapping[str, str] | None = None,
    *,
    gpu_resource: str = "nvidia.com/gpu",
    cpu: str = "64",
    memory: str = "512Gi",
    images: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Create a Ready node with ``gpus`` GPUs of ``gpu_resource``, as a kubelet would report it.

    The status is written through the ``status`` subresource because the main resource ignores
    status on create. ``images`` entries look like ``{"names": [...], "sizeBytes": N}`` and feed
    kube-scheduler's ImageLocality plugin. Returns the node as the API answers it.
    """
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **(labels or {}),
    }
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": all_labels}}
    request(api, "POST", "/api/v1/nodes", node)
    resources = {"cpu": cpu, "memory": memory, "pods": "110", gpu_resource: str(gpus)}
    status: dict[str, Any] = {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [_ready_condition(True)],
        "addresses": [{"type": "Hostname", "address": name}],
    }
    if images is not None:
        status["images"] = [dict(image) for image in images]
    result: dict[str, Any] = request(
        api, "PATCH", f"/api/v1/nodes/{name}/status", {"status": status}, content_type=MERGE_PATCH
    )
    return result


def set_node_ready(api: ApiClient, name: str, ready: bool) -> None:
    """Set the node's Ready condition and, as the node lifecycle controller would, its
    ``node.kubernetes.io/not-ready:NoSchedule`` taint (kube-scheduler filters on the taint)."""
    node = request(api, "GET", f"/api/v1/nodes/{name}")
    conditions = [c for c in node.get("status", {}).get("conditions") or [] if c.get("type") != "Ready"]
    conditions.append(_ready_condition(ready))
    request(
        api,
        "PATCH",
        f"/api/v1/nodes/{name}/status",
        {"status": {"conditions": conditions}},
        content_type=MERGE_PATCH,
    )
    taints = [
        t
        for t in node.get("spec", {}).get("taints") or []
        if (t.get("key"), t.get("effect")) != (NOT_READY_TAINT["key"], NOT_READY_TAINT["effect"])
    ]
    if not ready:
        taints.append(dict(NOT_READY_TAINT))
    request(api, "PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": taints or None}}, content_type=MERGE_PATCH)


def load_manifests(source: Manifest) -> list[dict[str, Any]]:
    """Objects from a YAML file, a folder of ``*.yaml``/``*.yml`` files (sorted), or dicts."""
    if isinstance(source, Mapping):
        return [dict(source)]
    if not isinstance(source, (str, Path)):
        return [dict(doc) for doc in source]
    path = Path(source)
    files: Iterable[Path] = (
        sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    )
    objects: list[dict[str, Any]] = []
    for file in files:
        for doc in yaml.safe_load_all(file.read_text()):
            if not doc:
                continue
            if doc.get("kind") == "List":
                objects.extend(doc.get("items") or [])
            else:
                objects.append(doc)
    return objects


class Discovery:
    """Maps apiVersion + kind to a REST path, one discovery request per group version.

    `get` fetches a discovery document by path; by default through ``request`` on ``api``.
    """

    def __init__(self, api: ApiClient, get: Callable[[str], Any] | None = None) -> None:
        self._get = get or (lambda path: request(api, "GET", path))
        self._resources: dict[str, list[dict[str, Any]]] = {}

    def path(self, obj: Mapping[str, Any]) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if api_version not in self._resources:
            self._resources[api_version] = self._get(base)["resources"]
        for resource in self._resources[api_version]:
            if resource["kind"] == kind and "/" not in resource["name"]:
                break
        else:
            raise LookupError(f"the API server has no {kind} in {api_version}")
        metadata = obj["metadata"]
        if resource["namespaced"]:
            base = f"{base}/namespaces/{metadata.get('namespace') or 'default'}"
        return f"{base}/{resource['name']}/{metadata['name']}"


def apply_manifest(api: ApiClient, manifest: Manifest, *, field_manager: str = FIELD_MANAGER) -> list[dict[str, Any]]:
    """Server-side apply every object in ``manifest`` (see :func:`load_manifests`), in order."""
    discovery = Discovery(api)
    applied = []
    for obj in load_manifests(manifest):
        applied.append(
            request(
                api,
                "PATCH",
                discovery.path(obj),
                obj,
                query={"fieldManager": field_manager, "force": "true"},
                content_type=APPLY_PATCH,
            )
        )
    return applied


def _established(api: ApiClient, name: str) -> bool:
    crd = request(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conditions = crd.get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def apply_crds(api: ApiClient, path: Manifest, *, timeout: float = 60.0) -> list[str]:
    """Apply the CustomResourceDefinitions (and anything else) in ``path``; wait until each CRD
    is Established, so objects of its kind can be created right away. Returns the CRD names."""
    applied = apply_manifest(api, path)
    names = [obj["metadata"]["name"] for obj in applied if obj.get("kind") == "CustomResourceDefinition"]
    for name in names:
        wait_until(functools.partial(_established, api, name), timeout=timeout, what=f"CRD {name} Established")
    return names


def wait_for_pod_node(api: ApiClient, namespace: str, name: str, *, timeout: float = 30.0) -> str:
    """Wait until the pod is bound and return its node name."""

    def node_name() -> str | None:
        pod = request(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod.get("spec", {}).get("nodeName") or None

    return wait_until(node_name, timeout=timeout, what=f"pod {namespace}/{name} to be bound")


def reset(api: ApiClient) -> None:
    """Delete every pod and node, so the next test starts from an empty cluster.

    Pods go with a zero grace period: without a kubelet, a bound pod deleted gracefully would
    stay Terminating forever. Namespaces are kept, since without kube-controller-manager a
    deleted namespace never finishes terminating.
    """
    for namespace in request(api, "GET", "/api/v1/namespaces")["items"]:
        name = namespace["metadata"]["name"]
        request(api, "DELETE", f"/api/v1/namespaces/{name}/pods", query={"gracePeriodSeconds": "0"})
    request(api, "DELETE", "/api/v1/nodes")
