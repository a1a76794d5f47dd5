"""List+watch informers over raw JSON, with resourceVersion, relist on 410 Gone, and reconnects
with capped exponential backoff. Each informer feeds one kind of object into ClusterState."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.state.kube import Kube, KubeError
from scheduler.state.store import ClusterState

log = logging.getLogger("gpusched.informer")

REPORTS_PATH = "/apis/gpusched.io/v1alpha1/gpunodereports"


@dataclass(frozen=True)
class Handlers:
    replace: Callable[[list[dict[str, Any]]], None]
    upsert: Callable[[Mapping[str, Any]], None]
    delete: Callable[[Mapping[str, Any]], None]


class Gone(Exception):
    """The resourceVersion is too old: the informer must list again."""


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
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.resource_version = ""

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        failures = 0
        need_list = True
        while not self.stopping.is_set():
            try:
                if need_list:
                    items, self.resource_version = self.kube.list_all(self.path, params=self.params)
                    self.handlers.replace(items)
                    self.synced.set()
                    need_list = False
                self._watch()
                failures = 0  # the server ended a healthy watch; resume from the last version
            except Gone:
                self.on_restart(self.kind, "gone")
                log.info("%s: resourceVersion expired, listing again", self.kind)
                need_list = True
            except KubeError as exc:
                if exc.status == 410:
                    self.on_restart(self.kind, "gone")
                    need_list = True
                    continue
                failures += 1
                self.on_restart(self.kind, "error")
                delay = min(self.backoff[1], self.backoff[0] * 2 ** min(failures, 16))
                delay *= 0.5 + random.random() / 2
                log.warning("%s: %s; retrying in %.1fs", self.kind, exc, delay)
                self.stopping.wait(delay)

    def _watch(self) -> None:
        for event in self.kube.watch(self.path, self.resource_version, self.watch_timeout_s, params=self.params):
            if self.stopping.is_set():
                return
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


def start_informers(
    kube: Kube,
    state: ClusterState,
    on_restart: Callable[[str, str], None] = lambda kind, why: None,
    lease_namespace: str = "gpusched-system",
) -> list[Informer]:
    """Nodes, pods, GPUNodeReports, the agents' Leases and image-pull events, each in its own thread."""
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
    for informer in informers:
        informer.start()
    return informers
