"""A thin raw-JSON layer over the official client: it brings the connection, TLS and auth; bodies
are read with orjson and fields picked directly, since building the client's model objects for a
large list costs seconds (docs/ARCHITECTURE.md, "Where state lives").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

CONNECTIONS = 64  # to the API server: watches, binds in flight, and reads


# urllib3 errors raised before a request left this process: nothing reached the API server.
NOT_SENT = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)


class KubeError(Exception):
    """An API answer other than success; `status` is the HTTP code (0 when the API was not reached)."""

    def __init__(self, status: int, message: str, outcome_unknown: bool = False) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        # The request may have reached the API server and taken effect (a read timed out, the
        # connection broke after sending): a write's outcome is unknown.
        self.outcome_unknown = outcome_unknown


class AnswerBrokeOff(KubeError):
    """The request reached the API, and its answer broke off or is no JSON: a write may have taken."""


def load_api_client(kubeconfig: str | None = None, *, retries: bool | None = None) -> k8s_client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (or $KUBECONFIG).

    `retries=False` turns off urllib3's own retries, for callers that back off themselves.
    """
    configuration = k8s_client.Configuration()
    # Watches hold one connection each for minutes, and kube-scheduler binds many pods at once:
    # with the client's default pool (5 per core) binds open a new TLS connection every time.
    configuration.connection_pool_maxsize = CONNECTIONS
    if retries is not None:
        configuration.retries = retries
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


class Kube:
    """GET / stream / POST / PATCH of raw JSON against the API server."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self.api = api_client

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | urllib3.Timeout | None = 30.0,
    ) -> Any:
        url_path = path + (("?" + urlencode(query)) if query else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, _, _ = self.api.param_serialize(
            method, url_path, header_params=headers, auth_settings=["BearerToken"]
        )
        try:
            return self.api.rest_client.pool_manager.request(
                method,
                url,
                body=orjson.dumps(body) if body is not None else None,
                headers=headers,
                timeout=timeout,
                preload_content=False,
            )
        except Exception as exc:  # urllib3 raises many types; all mean "no answer from the API"
            cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
            unknown = not isinstance(cause, NOT_SENT)
            raise KubeError(0, f"{method} {path}: {exc}", outcome_unknown=unknown) from exc

    def _json(self, resp: Any, what: str) -> Any:
        try:
            data = resp.read()
        except Exception as exc:  # the answer broke off (truncated, reset): the request reached the API
            resp.release_conn()
            raise AnswerBrokeOff(
                0, f"{what}: the answer broke off ({resp.status}): {exc}", outcome_unknown=True
            ) from exc
        resp.release_conn()
        if resp.status >= 300:
            try:
                message = orjson.loads(data).get("message", "")
            except orjson.JSONDecodeError:
                message = data[:200].decode(errors="replace")
            raise KubeError(resp.status, f"{what}: {message}")
        try:
            return orjson.loads(data) if data else {}
        except orjson.JSONDecodeError as exc:
            raise AnswerBrokeOff(0, f"{what}: the answer is not JSON ({resp.status})", outcome_unknown=True) from exc

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return self._json(self._request("GET", path, query), f"GET {path}")

    def post(self, path: str, body: Any) -> Any:
        return self._json(self._request("POST", path, body=body), f"POST {path}")

    def patch(self, path: str, body: Any, content_type: str, query: Mapping[str, Any] | None = None) -> Any:
        return self._json(self._request("PATCH", path, query, body=body, content_type=content_type), f"PATCH {path}")

    def list_all(
        self, path: str, page: int = 500, params: Mapping[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item of a collection (paginated), and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": page, **(params or {})}
        while True:
            body = self.get(path, query)
            items.extend(body.get("items") or ())
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query = {"limit": page, "continue": meta["continue"], **(params or {})}

    def watch(
        self, path: str, resource_version: str, timeout_s: int = 300, params: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Watch events from `resource_version`; ends when the server closes the stream."""
        query = {
            **(params or {}),
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_s,
        }
        resp = self._request("GET", path, query, timeout=urllib3.Timeout(connect=10.0, read=timeout_s + 30.0))
        if resp.status >= 300:
            self._json(resp, f"WATCH {path}")
        try:
            buffer = b""
            for chunk in resp.stream(64 * 1024):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)
        except Exception as exc:
            raise KubeError(0, f"watch {path} broke: {exc}") from exc
        finally:
            resp.release_conn()
