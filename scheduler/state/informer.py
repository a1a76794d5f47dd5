"""List+watch informers over raw JSON, with resourceVersion, relist on 410 Gone, and restarts with
capped exponential backoff. Each informer feeds one kind of object into ClusterState.

Faults: any exception in a list, a watch or a handler (a connection reset, a truncated body, an
HTTP error, a JSON error) restarts the informer: it waits `backoff_delay` (base * 2**failures,
capped, times a jitter in [0.5, 1)), lists again and watches from the list's version. The cause
is reported to `on_restart` (`restart_cause`). 410 Gone relists at once. A watch the server ends
normally resumes from the last version seen.

Health: `synced` is set by the first list; `failing_since` is the monotonic time of the first fault
since the last successful list (None while healthy). `stale_views` names the informers that have
not listed yet or have been failing for longer than a grace: their view may be missing changes,
and gpusched places no pod from it.
"""

from __future__ import annotations

import functools
import http.client
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3

from scheduler.core.gang_sources import K8S_POD_GROUP, PLUGINS_POD_GROUP, k8s_pod_group_size, plugins_pod_group_size
from scheduler.state.kube import AnswerBrokeOff, Kube, KubeError
from scheduler.state.store import ClusterState

log = logging.getLogger("gpusched.informer")

REPORTS_PATH = "/apis/gpusched.io/v1alpha1/gpunodereports"
# Gang sizes from PodGroups, each API's informer started only where the API server serves it (an
# absent CRD or API group would fail and restart forever): api group, path, size reader.
POD_GROUPS = (
    (K8S_POD_GROUP, "/apis/scheduling.k8s.io/v1beta1", k8s_pod_group_size),
    (PLUGINS_POD_GROUP, "/apis/scheduling.x-k8s.io/v1alpha1", plugins_pod_group_size),
)
# Pull events only refine cold-start estimates, and a member whose PodGroup is not known waits
# (never placed on a guess): neither is stale for placing.
OPTIONAL = frozenset({"events", *(f"podgroups.{group}" for group, _, _ in POD_GROUPS)})


@dataclass(frozen=True)
class Handlers:
    replace: Callable[[list[dict[str, Any]]], None]
    upsert: Callable[[Mapping[str, Any]], None]
    delete: Callable[[Mapping[str, Any]], None]


class Gone(Exception):
    """The resourceVersion is too old: the informer must list again."""


def restart_cause(exc: BaseException) -> str:
    """A bounded label for why an informer restarted: gone, connection (the API was not reached or
    the stream broke), http_4xx, http_5xx, read (a truncated or malformed body) or other."""
    if isinstance(exc, Gone) or (isinstance(exc, KubeError) and exc.status == 410):
        return "gone"
    if isinstance(exc, AnswerBrokeOff):
        return "read"
    if isinstance(exc, KubeError):
        if exc.status == 0:
            return "connection"
        return "http_5xx" if exc.status >= 500 else "http_4xx"
    if isinstance(exc, http.client.IncompleteRead | urllib3.exceptions.HTTPError | orjson.JSONDecodeError):
        return "read"
    if isinstance(exc, OSError):
        return "connection"
    return "other"


def backoff_delay(failures: int, base: float, cap: float, jitter: float) -> float:
    """Seconds before the next try after `failures` (>= 1) faults in a row: min(cap, base *
    2**(failures - 1)) scaled by 0.5 + jitter / 2 (`jitter` in [0, 1)), so restarts spread out."""
    return min(cap, base * 2 ** min(failures - 1, 32)) * (0.5 + jitter / 2)


class Informer(threading.Thread):
    def __init__(
        self,
        kube: Kube,
        kind: str,
        path: str,
        handlers: Handlers,
        on_restart: Callable[[str, str], None] = lambda kind, why: None,
        watch_timeout_s: int = 300,
        backoff: tuple[float, float] = (0.2, 30.0),
        params: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name=f"informer-{kind}", daemon=True)
        self.kube = kube
        self.kind = kind
        self.path = path
        self.handlers = handlers
        self.on_restart = on_restart
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff
        self.params = dict(params or {})
        self.clock = clock
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.resource_version = ""
        self.failing_since: float | None = None
        self.last_error = ""

    def stop(self) -> None:
        self.stopping.set()

    def stale(self, grace_s: float, now: float | None = None) -> str:
        """Why this informer's view may be missing changes ('' when it is current): it has not
        listed yet, or it has been failing for more than `grace_s` seconds."""
        if not self.synced.is_set():
            return f"not listed yet{': ' + self.last_error if self.last_error else ''}"
        since = self.failing_since
        if since is None:
            return ""
        failing_for = (self.clock() if now is None else now) - since
        return f"failing for {failing_for:.0f}s: {self.last_error}" if failing_for > grace_s else ""

    def run(self) -> None:
        failures = 0
        need_list = True
        while not self.stopping.is_set():
            try:
                if need_list:
                    items, self.resource_version = self.kube.list_all(self.path, params=self.params)
                    self.handlers.replace(items)
                    need_list = False
                    self.failing_since = None
                    self.synced.set()
                if self._watch():
                    failures = 0  # events flowed, or the server ended a healthy watch
            except Exception as exc:  # any fault restarts the informer; none may end its thread
                cause = restart_cause(exc)
                self.on_restart(self.kind, cause)
                self.last_error = f"{cause}: {exc}"[:160]
                if self.failing_since is None:
                    self.failing_since = self.clock()
                need_list = True  # what happened while away is known only from a fresh list
                if cause == "gone":
                    log.info("%s: resourceVersion expired, listing again", self.kind)
                    continue
                failures += 1
                delay = backoff_delay(failures, self.backoff[0], self.backoff[1], random.random())
                log.warning("%s: %s; listing again in %.1fs", self.kind, self.last_error, delay)
                self.stopping.wait(delay)

    def _watch(self) -> bool:
        """Apply watch events until the stream ends; True when it ended without a fault."""
        for event in self.kube.watch(self.path, self.resource_version, self.watch_timeout_s, params=self.params):
            if self.stopping.is_set():
                return True
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone()
                raise KubeError(int(obj.get("code") or 0), str(obj.get("message", "watch error")))
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
            if kind in ("ADDED", "MODIFIED"):
                self.handlers.upsert(obj)
            elif kind == "DELETED":
                self.handlers.delete(obj)
        return True


def stale_views(informers: Iterable[Informer], grace_s: float) -> dict[str, str]:
    """Kind -> why, for each informer gpusched places pods from whose view may be missing changes
    (`Informer.stale`); empty when every view is current. Pull events are not among them."""
    return {i.kind: why for i in informers if i.kind not in OPTIONAL and (why := i.stale(grace_s))}


def start_informers(
    kube: Kube,
    state: ClusterState,
    on_restart: Callable[[str, str], None] = lambda kind, why: None,
    lease_namespace: str = "gpusched-system",
) -> list[Informer]:
    """Nodes, pods, GPUNodeReports, the agents' Leases, image-pull events and the PodGroups of
    the APIs the server serves, each in its own thread."""
    informers = [
        Informer(
            kube,
            "nodes",
            "/api/v1/nodes",
            Handlers(state.replace_nodes, state.upsert_node, state.delete_node),
            on_restart,
        ),
        Informer(
            kube, "pods", "/api/v1/pods", Handlers(state.replace_pods, state.upsert_pod, state.delete_pod), on_restart
        ),
        Informer(
            kube,
            "gpunodereports",
            REPORTS_PATH,
            Handlers(state.replace_reports, state.upsert_report, state.delete_report),
            on_restart,
        ),
    ]
    informers.append(
        Informer(
            kube,
            "leases",
            f"/apis/coordination.k8s.io/v1/namespaces/{lease_namespace}/leases",
            Handlers(state.replace_leases, state.upsert_lease, state.delete_lease),
            on_restart,
        )
    )
    informers.append(
        Informer(
            kube,
            "events",
            "/api/v1/events",
            Handlers(state.replace_pull_events, state.observe_pull_event, lambda obj: None),
            on_restart,
            params={"fieldSelector": "reason=Pulled"},
        )
    )
    for group, path, size in POD_GROUPS:
        if serves(kube, path, "podgroups"):
            informers.append(
                Informer(
                    kube,
                    f"podgroups.{group}",
                    f"{path}/podgroups",
                    Handlers(
                        functools.partial(state.replace_group_sizes, group, size=size),
                        functools.partial(state.upsert_group_size, group, size=size),
                        functools.partial(state.delete_group_size, group),
                    ),
                    on_restart,
                )
            )
    for informer in informers:
        informer.start()
    return informers


def serves(kube: Kube, group_version: str, resource: str) -> bool:
    """Whether the API server serves `resource` in `group_version` (an API path such as
    /apis/scheduling.k8s.io/v1beta1). Unsure (any answer but 404 Not Found): True, and the
    informer retries as any other."""
    try:
        found = kube.get(group_version)
    except KubeError as exc:
        return exc.status != 404
    return any(r.get("name") == resource for r in found.get("resources") or ())
