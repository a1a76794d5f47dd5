"""The informer against a real HTTP server on loopback that speaks the API server's list and watch
protocol and injects faults (truncated bodies, connection resets, HTTP 500, 410 Gone, a watch
stream cut mid-event): the kube client's own code paths run, nothing of them is replaced."""

from __future__ import annotations

import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from scheduler.state.informer import (
    POD_GROUPS,
    Gone,
    Handlers,
    Informer,
    backoff_delay,
    restart_cause,
    serves,
    stale_views,
)
from scheduler.state.kube import Kube, KubeError, load_api_client
from tests.builders import kubeconfig

PATH = "/api/v1/things"
WAIT_S = 20.0  # the longest a test waits for the informer; a pass never comes near it


@dataclass
class Script:
    """What the fake API server holds and which faults it answers the next requests with."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 1
    faults: list[tuple[str, str]] = field(default_factory=list)  # (list|watch, fault), first one next
    down: bool = False  # answer every request with HTTP 500
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    requests: list[str] = field(default_factory=list)  # "list" or "watch@<version>", in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, name: str) -> None:
        """Add an object, as a create would, and tell the open watch."""
        with self.lock:
            self.version += 1
            obj = {"metadata": {"name": name, "resourceVersion": str(self.version)}}
            self.objects[name] = obj
        self.events.put({"type": "ADDED", "object": obj})

    def next_fault(self, verb: str) -> str:
        with self.lock:
            if self.down:
                return "500"
            if self.faults and self.faults[0][0] == verb:
                return self.faults.pop(0)[1]
            return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        script = self.server.script
        query = parse_qs(urlparse(self.path).query)
        watching = query.get("watch") == ["1"]
        verb = "watch" if watching else "list"
        with script.lock:
            script.requests.append(f"watch@{query['resourceVersion'][0]}" if watching else "list")
        fault = script.next_fault(verb)
        if fault == "reset":
            # SO_LINGER with a zero timeout: close() sends RST, the client reads ECONNRESET.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if fault in ("500", "410"):
            status = int(fault)
            self._send(status, {"kind": "Status", "code": status, "message": f"injected {status}"})
            return
        if fault == "truncated":
            body = json.dumps(self._list()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # and hang up: the client reads half a body
            self.wfile.flush()
            self.close_connection = True
            return
        if not watching:
            self._send(200, self._list())
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if fault == "gone":
            self._chunk({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
            self._end()
            return
        if fault == "cut":
            self._raw_chunk(b'{"type": "ADDED", "object": {"metadata": {"na')  # half an event, then gone
            self.close_connection = True
            return
        deadline = time.monotonic() + float(query.get("timeoutSeconds", ["5"])[0])
        while time.monotonic() < deadline and not self.server.closing.is_set():
            try:
                event = script.events.get(timeout=0.05)
            except queue.Empty:
                if script.down or (script.faults and script.faults[0] == ("watch", "drop")):
                    if not script.down:
                        script.next_fault("watch")
                    self.close_connection = True  # the server went away mid-watch
                    return
                continue
            self._chunk(event)
        self._end()

    def _list(self) -> dict[str, Any]:
        script = self.server.script
        with script.lock:
            return {"items": list(script.objects.values()), "metadata": {"resourceVersion": str(script.version)}}

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _chunk(self, event: dict[str, Any]) -> None:
        self._raw_chunk(json.dumps(event).encode() + b"\n")

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = script
        self.closing = threading.Event()


@dataclass
class Running:
    informer: Informer
    script: Script
    seen: dict[str, Any]
    restarts: list[str]

    def wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not check():
            assert time.monotonic() < deadline, f"waited {WAIT_S}s for {what}; restarts {self.restarts}"
            time.sleep(0.01)
        assert self.informer.is_alive(), "the informer's thread ended"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Callable[[Script], Running]]:
    """Start the fake API server with a script and an informer on it, through a kubeconfig, as the
    extender builds its client (scheduler/extender/cli.py)."""
    started: list[tuple[ApiServer, Informer]] = []

    def start(script: Script) -> Running:
        server = ApiServer(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        config = kubeconfig(tmp_path / f"kubeconfig-{server.server_port}", f"http://127.0.0.1:{server.server_port}")
        seen: dict[str, Any] = {}
        restarts: list[str] = []

        def replace(items: list[dict[str, Any]]) -> None:
            seen.clear()
            seen.update({i["metadata"]["name"]: i for i in items})

        handlers = Handlers(
            replace,
            lambda o: seen.__setitem__(o["metadata"]["name"], o),
            lambda o: seen.pop(o["metadata"]["name"], None),
        )
        informer = Informer(
            Kube(load_api_client(str(config))),
            "things",
            PATH,
            handlers,
            on_restart=lambda kind, why: restarts.append(why),
            watch_timeout_s=5,
            backoff=(0.01, 0.05),
        )
        informer.start()
        started.append((server, informer))
        return Running(informer, script, seen, restarts)

    yield start
    for server, informer in started:
        informer.stop()
        server.closing.set()
        server.shutdown()
        server.server_close()


def test_lists_then_applies_watch_events_from_the_lists_version(api: Callable[[Script], Running]) -> None:
    script = Script(objects={"a": {"metadata": {"name": "a", "resourceVersion": "1"}}})
    run = api(script)
    run.wait(lambda: "watch@1" in script.requests, "the watch from the list's version")
    script.put("b")
    run.wait(lambda: set(run.seen) == {"a", "b"}, "b from the watch")
    assert run.informer.synced.is_set() and run.informer.failing_since is None
    assert script.requests[:2] == ["list", "watch@1"] and run.restarts == []


@dataclass(frozen=True)
class FaultCase:
    id: str
    faults: list[tuple[str, str]]
    cause: str  # what the restart counter is labelled with


FAULTS = [
    # urllib3 retries a GET whose connection resets three times itself: the fourth reaches the informer
    FaultCase("list: connection reset", [("list", "reset")] * 4, "connection"),
    FaultCase("list: truncated body (IncompleteRead)", [("list", "truncated")], "read"),
    FaultCase("list: HTTP 500", [("list", "500")], "http_5xx"),
    FaultCase("list: 410 Gone", [("list", "410")], "gone"),
    FaultCase("watch: HTTP 500 at the start", [("watch", "500")], "http_5xx"),
    FaultCase("watch: 410 Gone at the start", [("watch", "410")], "gone"),
    FaultCase("watch: ERROR event 410 Gone", [("watch", "gone")], "gone"),
    FaultCase("watch: stream cut mid-event", [("watch", "cut")], "connection"),
    FaultCase("watch: connection reset", [("watch", "reset")] * 4, "connection"),
]


@pytest.mark.parametrize("case", FAULTS, ids=[c.id for c in FAULTS])
def test_a_fault_restarts_the_informer_which_lists_again_and_counts_why(
    api: Callable[[Script], Running], case: FaultCase
) -> None:
    script = Script(objects={"a": {"metadata": {"name": "a", "resourceVersion": "1"}}}, faults=list(case.faults))
    run = api(script)
    run.wait(lambda: not script.faults and run.informer.synced.is_set(), "the faults to be answered")
    script.put("b")  # after the fault: seen only if the informer lives and watches again
    # Healthy again: listed after the fault, and watching from that list.
    run.wait(
        lambda: (
            set(run.seen) == {"a", "b"}
            and run.informer.failing_since is None
            and script.requests[-1].startswith("watch@")
        ),
        "the view to catch up",
    )
    assert set(run.restarts) == {case.cause}, run.restarts


def test_objects_deleted_while_the_watch_was_down_go_away_on_the_relist(api: Callable[[Script], Running]) -> None:
    script = Script(objects={n: {"metadata": {"name": n, "resourceVersion": "1"}} for n in ("a", "b")})
    run = api(script)
    run.wait(lambda: set(run.seen) == {"a", "b"} and "watch@1" in script.requests, "the first list and watch")
    with script.lock:
        del script.objects["b"]  # deleted while the watch is cut: no DELETED event will come
        script.version += 1
        script.faults = [("watch", "drop")]  # the open watch ends without its last chunk
    run.wait(lambda: set(run.seen) == {"a"}, "the relist to drop b")
    assert run.restarts == ["connection"]


def test_a_server_that_stays_down_makes_the_view_stale_until_it_lists_again(
    api: Callable[[Script], Running],
) -> None:
    script = Script(objects={"a": {"metadata": {"name": "a", "resourceVersion": "1"}}})
    run = api(script)
    run.wait(lambda: run.informer.synced.is_set(), "the first list")
    assert stale_views([run.informer], grace_s=0) == {}
    script.down = True
    # The open watch breaks first (connection), then every list answers 500.
    run.wait(lambda: "http_5xx" in stale_views([run.informer], grace_s=0).get("things", ""), "the view to go stale")
    why = stale_views([run.informer], grace_s=0)["things"]
    assert why.startswith("failing for ") and "injected 500" in why, why
    assert stale_views([run.informer], grace_s=3600) == {}  # within the grace: not stale yet
    script.down = False
    run.wait(lambda: not stale_views([run.informer], grace_s=0), "the view to be current again")
    script.put("b")
    run.wait(lambda: set(run.seen) == {"a", "b"}, "events after the outage")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("synced", "failing_for", "grace", "why"),
    [
        (False, None, 30.0, "not listed yet: connection: refused"),
        (True, None, 30.0, ""),
        (True, 10.0, 30.0, ""),  # failing 10 s < 30 s of grace
        (True, 30.0, 30.0, ""),  # 30 s is not more than the grace
        (True, 31.0, 30.0, "failing for 31s: connection: refused"),
        (True, 0.5, 0.0, "failing for 0s: connection: refused"),  # no grace: stale at once
    ],
)
def test_staleness(synced: bool, failing_for: float | None, grace: float, why: str) -> None:
    clock = Clock()
    informer = Informer(None, "pods", PATH, Handlers(print, print, print), clock=clock)  # type: ignore[arg-type]
    informer.last_error = "connection: refused"
    if synced:
        informer.synced.set()
    if failing_for is not None:
        informer.failing_since = clock.now - failing_for
    assert informer.stale(grace) == why
    assert stale_views([informer], grace) == ({"pods": why} if why else {})


def test_pull_events_are_never_a_stale_view() -> None:
    informer = Informer(None, "events", PATH, Handlers(print, print, print))  # type: ignore[arg-type]
    assert informer.stale(30.0) and stale_views([informer], 30.0) == {}


@pytest.mark.parametrize(
    ("failures", "jitter", "delay"),
    [
        (1, 0.0, 0.1),  # 0.2 * 2**0 * 0.5
        (1, 0.999, 0.1999),  # 0.2 * (0.5 + 0.4995)
        (3, 0.0, 0.4),  # 0.2 * 2**2 * 0.5
        (8, 0.0, 12.8),  # 0.2 * 2**7 * 0.5 = 12.8: still under the cap
        (9, 0.0, 15.0),  # 0.2 * 2**8 = 51.2 -> capped at 30, * 0.5
        (1000, 0.999, 29.985),  # capped: 30 * 0.9995
    ],
)
def test_backoff_grows_to_a_cap_with_jitter(failures: int, jitter: float, delay: float) -> None:
    assert backoff_delay(failures, 0.2, 30.0, jitter) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (Gone(), "gone"),
        (KubeError(410, "Gone"), "gone"),
        (KubeError(0, "connection refused"), "connection"),
        (KubeError(500, "etcd"), "http_5xx"),
        (KubeError(403, "forbidden"), "http_4xx"),
        (ConnectionResetError(), "connection"),
        (ValueError("a handler's bug"), "other"),
    ],
)
def test_restart_causes_are_few_and_named(exc: BaseException, cause: str) -> None:
    assert restart_cause(exc) == cause


class Discovery:
    """A Kube whose `get` answers an API group version's discovery document, or fails with `status`."""

    def __init__(self, resources: tuple[str, ...] = (), status: int | None = None) -> None:
        self.resources, self.status = resources, status

    def get(self, path: str) -> dict[str, Any]:
        if self.status is not None:
            raise KubeError(self.status, f"GET {path}")
        return {"groupVersion": path.removeprefix("/apis/"), "resources": [{"name": r} for r in self.resources]}


@pytest.mark.parametrize(
    ("kube", "served"),
    [
        (Discovery(("podgroups", "podgroups/status", "workloads")), True),
        (Discovery(("workloads",)), False),  # the group is served, PodGroups are not
        (Discovery(status=404), False),  # no such API group: the CRD is not installed, or the API is off
        (Discovery(status=503), True),  # unsure: start it, and it retries as any informer
        (Discovery(status=0), True),  # no answer at all: unsure too
    ],
)
def test_pod_group_informers_start_only_where_the_api_is_served(kube: Discovery, served: bool) -> None:
    assert serves(kube, "/apis/scheduling.k8s.io/v1beta1", "podgroups") is served  # type: ignore[arg-type]


def test_pod_group_views_are_never_stale_for_placing() -> None:
    """A member whose PodGroup is not known waits with a reason; nothing is placed on a guess."""
    informers = [
        Informer(None, f"podgroups.{group}", PATH, Handlers(print, print, print))  # type: ignore[arg-type]
        for group, _, _ in POD_GROUPS
    ]
    assert all(i.stale(30.0) for i in informers) and stale_views(informers, 30.0) == {}
