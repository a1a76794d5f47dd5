"""Writes the node's GPUNodeReport when its content changes, and renews the node's Lease as its heartbeat.

:class:`Publisher` decides *when*; a sink decides *how*. The sink in production is
:class:`KubernetesSink`: a server-side apply (``fieldManager=gpusched-agent``, ``force=true``)
of the whole report, so the agent owns every field it writes and a field it stops writing
disappears, and a server-side apply of the Lease ``<namespace>/<node name>``.

Liveness and content are separate objects, as the kubelet separates node Leases from
``Node.status``: every watcher of reports gets every report write, so reports are written only
when they say something new, and the small Lease carries the heartbeat.

Rules, with ``now`` from an injectable clock:

- a report whose :func:`gpu_agent.report.material` digest differs from the last one written is
  written as soon as the write-rate bound allows;
- a report whose only changes are volatile (utilisation, used memory, bandwidth, free disk) is
  written when ``refresh`` seconds passed since the last successful write;
- a report whose content equals the last one written (``reportTime`` aside) is never written;
- never two report writes less than ``min_interval`` seconds apart;
- the Lease (``spec.renewTime``, ``spec.leaseDurationSeconds``, ``spec.holderIdentity``) is renewed
  every ``heartbeat`` seconds, but only while the API holds the latest report's content and a
  report was offered in the last ``lease_duration - heartbeat`` seconds: an agent that cannot
  sample its GPUs, or whose report writes fail (RBAC, CRD, admission), lets its Lease expire;
- a failed write (API unreachable, 5xx, 403, anything) is retried after an exponential backoff
  (``initial * factor**n``, capped at ``maximum``, with +-``jitter`` spread), always with the
  *latest* report, until one succeeds; then the backoff resets. A report the API refuses as too
  large or invalid (413, 422) is retried at once without its inventory lists (images, models,
  adapters), so GPU and health data still get through. The agent never stops for it.

Both objects are owned by the Node (``ownerReferences`` with its uid), so the garbage collector
deletes them with it; a Node recreated under the same name has a new uid, and the agent's next
write carries it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpu_agent.report import API_VERSION, PLURAL, content, material, without_inventory

log = logging.getLogger(__name__)

FIELD_MANAGER = "gpusched-agent"
APPLY_PATCH = "application/apply-patch+yaml"
LEASE_NAMESPACE = "gpusched-system"
TOO_LARGE = (413, 422)


def lease_object(
    node_name: str, *, namespace: str, duration: int, renew_time: float, node_uid: str | None
) -> dict[str, Any]:
    """The node's Lease as applied: ``coordination.k8s.io/v1``, named after the node."""
    import datetime as _dt

    stamp = _dt.datetime.fromtimestamp(renew_time, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    metadata: dict[str, Any] = {"name": node_name, "namespace": namespace}
    if node_uid:
        metadata["ownerReferences"] = [owner_reference(node_name, node_uid)]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": f"gpusched-agent/{node_name}", "leaseDurationSeconds": duration, "renewTime": stamp},
    }


def owner_reference(node_name: str, node_uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}


class ApplyError(RuntimeError):
    """A write that did not succeed; ``status`` is the HTTP status when the API answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Sink(Protocol):
    def apply(self, report: Mapping[str, Any]) -> None: ...
    def renew(self, lease: Mapping[str, Any]) -> None: ...
    def node(self, name: str) -> Mapping[str, Any] | None: ...


@dataclass
class Backoff:
    """Exponential backoff; :meth:`next` gives the next delay, :meth:`reset` starts over."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        delay = min(self.initial * self.factor**self.attempts, self.maximum)
        self.attempts += 1
        if self.jitter:
            delay *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return max(delay, 0.0)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class PublisherStats:
    writes_ok: int = 0
    writes_failed: int = 0
    last_error: str = ""
    last_success_report_time: str = ""  # reportTime of the last report the API accepted
    last_success_at: float | None = None  # wall-clock time of that write
    renewals_ok: int = 0
    renewals_failed: int = 0
    last_renew_at: float | None = None  # wall-clock time of the last Lease renewal the API accepted
    last_report_bytes: int = 0  # JSON bytes of the last report written
    shrunk: int = 0  # writes refused as too large, retried without the inventory lists


class Publisher:
    def __init__(
        self,
        sink: Sink,
        *,
        heartbeat: float = 30.0,
        refresh: float = 300.0,
        min_interval: float = 5.0,
        lease_duration: int | None = None,
        lease_namespace: str = LEASE_NAMESPACE,
        node_check: float = 60.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if heartbeat <= 0 or min_interval < 0 or refresh <= 0:
            raise ValueError("heartbeat and refresh must be > 0 and min_interval >= 0")
        self.sink = sink
        self.heartbeat = heartbeat
        self.refresh = refresh
        self.min_interval = min_interval
        self.lease_duration = int(lease_duration or max(3 * heartbeat, heartbeat + 10))
        if self.lease_duration <= heartbeat:
            raise ValueError("lease_duration must be longer than heartbeat")
        self.lease_namespace = lease_namespace
        self.node_check = node_check
        self.backoff = backoff or Backoff()
        self.lease_backoff = Backoff(initial=self.backoff.initial, maximum=heartbeat, jitter=self.backoff.jitter)
        self.clock = clock
        self.wall_clock = wall_clock
        self.stats = PublisherStats()
        self._pending: Mapping[str, Any] | None = None
        self._pending_digest = ""
        self._pending_content = ""
        self._offered_at: float | None = None
        self._written_digest: str | None = None
        self._written_content: str | None = None
        self._last_success: float | None = None
        self._not_before = float("-inf")
        self._renewed_at: float | None = None
        self._renew_not_before = float("-inf")
        self._uid: str | None = None
        self._uid_at: float | None = None
        self._written_uid: str | None = None
        self.node_labels: dict[str, str] = {}  # the Node's labels as last read (every node_check seconds)
        self._shrink = False

    # ------------------------------------------------------------------ report

    def offer(self, report: Mapping[str, Any]) -> None:
        """Make ``report`` the one to write next (replacing any not yet written)."""
        self._pending = report
        self._pending_digest = material(report)
        self._pending_content = content(report)
        self._offered_at = self.clock()

    def _report_due_at(self) -> float | None:
        if self._pending is None:
            return None
        if self._uid != self._written_uid and self._written_content is not None:
            return self._not_before  # the Node appeared or was recreated: its new uid must be the owner
        if self._pending_content == self._written_content:
            return None
        if self._written_digest != self._pending_digest or self._last_success is None:
            return self._not_before
        return max(self._not_before, self._last_success + self.refresh)

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until a report write or Lease renewal is due (0: now), None when neither is."""
        now = self.clock() if now is None else now
        times = [t for t in (self._report_due_at(), self._renew_due_at(now)) if t is not None]
        return max(min(times) - now, 0.0) if times else None

    def _node_uid(self, now: float) -> str | None:
        if self._uid_at is None or now - self._uid_at >= self.node_check:
            # An ApplyError here fails the write: objects always go out with their owner, except
            # where the Node does not exist (None).
            node = self.sink.node(self._node_name())
            meta = (node or {}).get("metadata") or {}
            self._uid = str(meta["uid"]) if meta.get("uid") else None
            self.node_labels = dict(meta.get("labels") or {})
            self._uid_at = now
        return self._uid

    def _node_name(self) -> str:
        assert self._pending is not None
        return str(self._pending["metadata"]["name"])

    def publish_if_due(self, now: float | None = None) -> bool | None:
        """Write the report if due, then renew the Lease if due: True when a report was written,
        False when its write failed (retry scheduled), None when no report write was due."""
        now = self.clock() if now is None else now
        result = self._write_report(now)
        self.renew_if_due(now)
        if self._pending is not None:
            try:  # keeps the uid and labels (the driver-upgrade state) current between writes
                self._node_uid(now)
            except ApplyError as exc:
                log.debug("reading the Node: %s", exc)
        return result

    def _write_report(self, now: float) -> bool | None:
        at = self._report_due_at()
        if at is None or at > now:
            return None
        assert self._pending is not None
        report, digest, text = self._pending, self._pending_digest, self._pending_content
        try:
            uid = self._node_uid(now)
            body = dict(report)
            if uid:
                body["metadata"] = {**report["metadata"], "ownerReferences": [owner_reference(self._node_name(), uid)]}
            if self._shrink:
                body = without_inventory(body)
            self.sink.apply(body)
        except ApplyError as exc:
            if exc.status in TOO_LARGE and not self._shrink:
                self._shrink = True
                self.stats.shrunk += 1
                log.warning("the API refused the report (%s); writing it without images, models and adapters", exc)
                return self._write_report(now)
            delay = self.backoff.next()
            self._not_before = now + max(delay, self.min_interval)
            self.stats.writes_failed += 1
            self.stats.last_error = str(exc)
            log.warning("writing GPUNodeReport failed (%s); retrying in %.1fs", exc, delay)
            return False
        self._shrink = False
        self.backoff.reset()
        self._written_uid = uid
        self._written_digest = digest
        self._written_content = text
        self._last_success = now
        self._not_before = now + self.min_interval
        self.stats.writes_ok += 1
        self.stats.last_error = ""
        self.stats.last_success_report_time = str((report.get("spec") or {}).get("reportTime", ""))
        self.stats.last_success_at = self.wall_clock()
        self.stats.last_report_bytes = len(json.dumps(body, separators=(",", ":")))
        return True

    # ------------------------------------------------------------------ lease

    def alive(self, now: float) -> bool:
        """Whether the Lease may be renewed: the API holds the latest material content and a
        report was offered recently (the agent is sampling its GPUs)."""
        return (
            self._pending is not None
            and self._written_digest == self._pending_digest
            and self._offered_at is not None
            and now - self._offered_at <= self.lease_duration - self.heartbeat
        )

    def _renew_due_at(self, now: float) -> float | None:
        if not self.alive(now):
            return None
        last = self._renewed_at
        return max(self._renew_not_before, last + self.heartbeat if last is not None else now)

    def renew_if_due(self, now: float | None = None) -> bool | None:
        now = self.clock() if now is None else now
        at = self._renew_due_at(now)
        if at is None or at > now:
            return None
        name = self._node_name()
        try:
            lease = lease_object(
                name,
                namespace=self.lease_namespace,
                duration=self.lease_duration,
                renew_time=self.wall_clock(),
                node_uid=self._node_uid(now),
            )
            self.sink.renew(lease)
        except ApplyError as exc:
            delay = self.lease_backoff.next()
            self._renew_not_before = now + delay
            self.stats.renewals_failed += 1
            self.stats.last_error = str(exc)
            log.warning("renewing Lease %s/%s failed (%s); retrying in %.1fs", self.lease_namespace, name, exc, delay)
            return False
        self.lease_backoff.reset()
        self._renewed_at = now
        self.stats.renewals_ok += 1
        self.stats.last_renew_at = self.wall_clock()
        return True


class KubernetesSink:
    """Server-side apply of GPUNodeReports through the kubernetes client (imported here, lazily).

    Configuration: ``kubeconfig`` if given, else in-cluster (the pod's service-account token),
    else the default kubeconfig. urllib3's own retries are off: :class:`Publisher` retries.
    """

    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        field_manager: str = FIELD_MANAGER,
        timeout: tuple[float, float] = (5.0, 15.0),
    ) -> None:
        from scheduler.state.kube import load_api_client  # imports the kubernetes client: only when publishing

        self.api = load_api_client(kubeconfig, retries=False)
        self.field_manager = field_manager
        self.timeout = timeout

    def close(self) -> None:
        self.api.close()

    def path(self, name: str) -> str:
        return f"/apis/{API_VERSION}/{PLURAL}/{name}"

    def lease_path(self, namespace: str, name: str) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"

    def _call(self, method: str, path: str, body: str | None = None, query: list[tuple[str, str]] | None = None) -> Any:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = APPLY_PATCH
        try:
            serialized = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            response = self.api.call_api(*serialized, _request_timeout=self.timeout)
            data = response.read()
        except ApiException as exc:
            raise ApplyError(f"HTTP {exc.status}: {_reason(exc.body) or exc.reason}", exc.status) from exc
        except Exception as exc:  # urllib3 / socket errors: the API is unreachable
            raise ApplyError(f"API unreachable: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status <= 299:
            raise ApplyError(f"HTTP {response.status}: {_reason(data)}", response.status)
        return json.loads(data) if data else None

    def _apply(self, path: str, obj: Mapping[str, Any]) -> None:
        self._call(
            "PATCH",
            path,
            json.dumps(obj, separators=(",", ":")),
            [("fieldManager", self.field_manager), ("force", "true")],
        )

    def apply(self, report: Mapping[str, Any]) -> None:
        self._apply(self.path(report["metadata"]["name"]), report)

    def renew(self, lease: Mapping[str, Any]) -> None:
        meta = lease["metadata"]
        self._apply(self.lease_path(meta["namespace"], meta["name"]), lease)

    def node(self, name: str) -> dict[str, Any] | None:
        """The Node object (from the API server's watch cache), None when it does not exist."""
        try:
            return self._call("GET", f"/api/v1/nodes/{name}", query=[("resourceVersion", "0")])
        except ApplyError as exc:
            if exc.status == 404:
                return None
            raise


def _reason(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or the body itself, shortened."""

    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        message = json.loads(body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    text = str(message or body or "")
    return text[:500]


class MemorySink:
    """A sink that keeps what it is given, with the bytes each write would send: for ``--print``
    style runs, the tests and the write-rate benchmark. ``down`` makes every call fail as an
    unreachable API does; ``max_bytes`` refuses larger reports with 413, as the API server does."""

    def __init__(
        self,
        *,
        node_uids: Mapping[str, str] | None = None,
        node_labels: Mapping[str, Mapping[str, str]] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.reports: list[tuple[float, dict[str, Any]]] = []
        self.leases: list[tuple[float, dict[str, Any]]] = []
        self.node_uids = dict(node_uids or {})
        self.node_labels = {k: dict(v) for k, v in (node_labels or {}).items()}
        self.max_bytes = max_bytes
        self.down = False
        self.bytes_written = 0
        self.clock: Callable[[], float] = time.monotonic

    def _check(self) -> None:
        if self.down:
            raise ApplyError("API unreachable: connection refused")

    def apply(self, report: Mapping[str, Any]) -> None:
        self._check()
        body = json.dumps(report, separators=(",", ":"))
        if self.max_bytes is not None and len(body) > self.max_bytes:
            raise ApplyError(f"HTTP 413: request entity too large: {len(body)} bytes", 413)
        self.bytes_written += len(body)
        self.reports.append((self.clock(), json.loads(body)))

    def renew(self, lease: Mapping[str, Any]) -> None:
        self._check()
        body = json.dumps(lease, separators=(",", ":"))
        self.bytes_written += len(body)
        self.leases.append((self.clock(), json.loads(body)))

    def node(self, name: str) -> dict[str, Any] | None:
        self._check()
        if name not in self.node_uids:
            return None
        return {"metadata": {"name": name, "uid": self.node_uids[name], "labels": self.node_labels.get(name, {})}}
