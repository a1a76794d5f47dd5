"""Writes the node's GPUNodeReport: on change, as a heartbeat, at a bounded rate, with backoff.

:class:`Publisher` decides *when*; a sink decides *how*. The sink in production is
:class:`KubernetesSink`: a server-side apply (``fieldManager=gpusched-agent``, ``force=true``)
of the whole object, so the agent owns every field it writes and a field it stops writing
disappears.

Rules, with ``now`` from an injectable clock:

- a report whose :func:`gpu_agent.report.material` digest differs from the last one written is
  written as soon as the write-rate bound allows;
- otherwise a newer report than the one last written is written when ``heartbeat`` seconds
  passed since the last successful write (so readers see ``reportTime`` advance); the same
  report is never written twice, so when the agent stops making reports (NVML fails) the one
  in the API ages;
- never two write attempts less than ``min_interval`` seconds apart;
- a failed write (API unreachable, 5xx, 403, anything) is retried after an exponential backoff
  (``initial * factor**n``, capped at ``maximum``, with +-``jitter`` spread), always with the
  *latest* report, until one succeeds; then the backoff resets. The agent never stops for it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpu_agent.report import API_VERSION, PLURAL, material

log = logging.getLogger(__name__)

FIELD_MANAGER = "gpusched-agent"
APPLY_PATCH = "application/apply-patch+yaml"


class ApplyError(RuntimeError):
    """A write that did not succeed; ``status`` is the HTTP status when the API answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Sink(Protocol):
    def apply(self, report: Mapping[str, Any]) -> None: ...


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


class Publisher:
    def __init__(
        self,
        sink: Sink,
        *,
        heartbeat: float = 30.0,
        min_interval: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if heartbeat <= 0 or min_interval < 0:
            raise ValueError("heartbeat must be > 0 and min_interval >= 0")
        self.sink = sink
        self.heartbeat = heartbeat
        self.min_interval = min_interval
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.wall_clock = wall_clock
        self.stats = PublisherStats()
        self._pending: Mapping[str, Any] | None = None
        self._pending_digest = ""
        self._pending_written = False
        self._written_digest: str | None = None
        self._last_success: float | None = None
        self._not_before = float("-inf")

    def offer(self, report: Mapping[str, Any]) -> None:
        """Make ``report`` the one to write next (replacing any not yet written)."""
        self._pending = report
        self._pending_digest = material(report)
        self._pending_written = False

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until a write is due (0 when due now), None when there is nothing to write."""
        if self._pending is None or self._pending_written:
            return None
        now = self.clock() if now is None else now
        if self._written_digest != self._pending_digest or self._last_success is None:
            at = self._not_before
        else:
            at = max(self._not_before, self._last_success + self.heartbeat)
        return max(at - now, 0.0)

    def publish_if_due(self, now: float | None = None) -> bool | None:
        """Write if due: True written, False failed (retry scheduled), None nothing due."""
        now = self.clock() if now is None else now
        wait = self.due_in(now)
        if wait is None or wait > 0:
            return None
        report, digest = self._pending, self._pending_digest
        assert report is not None
        try:
            self.sink.apply(report)
        except ApplyError as exc:
            delay = self.backoff.next()
            self._not_before = now + max(delay, self.min_interval)
            self.stats.writes_failed += 1
            self.stats.last_error = str(exc)
            log.warning("writing GPUNodeReport failed (%s); retrying in %.1fs", exc, delay)
            return False
        self.backoff.reset()
        self._pending_written = True
        self._written_digest = digest
        self._last_success = now
        self._not_before = now + self.min_interval
        self.stats.writes_ok += 1
        self.stats.last_error = ""
        self.stats.last_success_report_time = str((report.get("spec") or {}).get("reportTime", ""))
        self.stats.last_success_at = self.wall_clock()
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

    def apply(self, report: Mapping[str, Any]) -> None:
        import json

        from kubernetes.client.exceptions import ApiException

        name = report["metadata"]["name"]
        try:
            serialized = self.api.param_serialize(
                "PATCH",
                self.path(name),
                query_params=[("fieldManager", self.field_manager), ("force", "true")],
                header_params={"Accept": "application/json", "Content-Type": APPLY_PATCH},
                body=json.dumps(report),
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(*serialized, _request_timeout=self.timeout)
            body = response.read()
        except ApiException as exc:
            raise ApplyError(f"HTTP {exc.status}: {_reason(exc.body) or exc.reason}", exc.status) from exc
        except Exception as exc:  # urllib3 / socket errors: the API is unreachable
            raise ApplyError(f"API unreachable: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status <= 299:
            raise ApplyError(f"HTTP {response.status}: {_reason(body)}", response.status)


def _reason(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or the body itself, shortened."""
    import json

    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        message = json.loads(body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    text = str(message or body or "")
    return text[:500]
