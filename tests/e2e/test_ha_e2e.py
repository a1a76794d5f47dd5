"""Two extender replicas with leader election behind kube-scheduler, on the real control plane: the
leader is killed with SIGKILL during a burst of pods, scheduling resumes through the other replica,
and no GPU is handed out twice.

kube-scheduler has one extender URL. In a cluster that URL is the Service, whose endpoints are the
Ready replicas (readiness: informers synced and a live leader known). Here `Front` plays the
Service: a small HTTP proxy that probes each replica's /readyz every 0.5 s and passes each request
to the Ready replicas in turn, answering 503 when none is Ready (as a Service without endpoints
would refuse the connection). A request that reaches the standby is forwarded by it to the leader.

The replicas run with a shorter Lease than kube-scheduler's default (6 s instead of 15 s) so that
the takeover fits the 15 s this test allows: a standby takes over once the record it last saw is
leaseDuration old, plus up to two of its retry periods (1 s x 2.2 with jitter) to see the last
renewal and to try again, plus kube-scheduler's retry backoff (at most 2 s here); 6 + 2.2 + 2.2 +
2 = 12.4 s at worst.
"""

from __future__ import annotations

import http.server
import itertools
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import k8s
from localcluster.cluster import LocalCluster
from scheduler.core.quantity import parse_quantity
from tests.e2e.gpusched_env import CRDS, FAST_BACKOFF, REPORTS, Env, Extender

pytestmark = pytest.mark.e2e

LEASE_NAME = "gpusched-extender-ha-e2e"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{LEASE_NAME}"
NODES, GPUS_PER_NODE = 8, 4
PODS = NODES * GPUS_PER_NODE  # one GPU each: they fill every GPU exactly
FAILOVER_LIMIT_S = 15.0


class Front(http.server.ThreadingHTTPServer):
    """The Service: routes each request to a Ready replica, round robin; see the module docstring."""

    daemon_threads = True

    def __init__(self, backends: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), FrontHandler)
        self.backends = backends
        self.ready: list[str] = []
        self.turn = itertools.count()
        self.stopping = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()
        threading.Thread(target=self.probe, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def probe(self) -> None:
        while not self.stopping.is_set():
            ready = []
            for backend in self.backends:
                try:
                    with urllib.request.urlopen(f"{backend}/readyz", timeout=1) as resp:
                        if resp.status == 200:
                            ready.append(backend)
                except OSError:
                    pass
            self.ready = ready
            self.stopping.wait(0.5)

    def pick(self) -> str | None:
        ready = self.ready
        return ready[next(self.turn) % len(ready)] if ready else None

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class FrontHandler(http.server.BaseHTTPRequestHandler):
    server: Front

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        backend = self.server.pick()
        if backend is None:
            return self.answer(503, b"no ready endpoint")
        request = urllib.request.Request(
            backend + self.path, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return self.answer(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return self.answer(exc.code, exc.read())
        except OSError as exc:
            return self.answer(502, str(exc).encode())

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def replicas(control_plane: LocalCluster, tmp_path: Path) -> Iterator[tuple[Env, list[Extender], Front]]:
    control_plane.apply_crds(CRDS)
    extenders = []
    for i in range(2):
        workdir = tmp_path / f"replica-{i}"
        workdir.mkdir()
        extenders.append(
            Extender(
                control_plane,
                workdir,
                args=[
                    "--leader-elect",
                    f"--leader-elect-identity=replica-{i}",
                    "--leader-elect-resource-namespace=default",
                    f"--leader-elect-resource-name={LEASE_NAME}",
                    "--leader-elect-lease-duration=6",
                    "--leader-elect-renew-deadline=4",
                    "--leader-elect-retry-period=1",
                    "--advertise-address=127.0.0.1",
                ],
            )
        )
    front = Front([e.url for e in extenders])
    env = Env(control_plane, extenders[0])
    try:
        for e in extenders:
            e.start()  # returns once /readyz answers: synced, and a leader is known
        control_plane.start_scheduler(front.url, extender_config={}, scheduler_config=FAST_BACKOFF)
        yield env, extenders, front
    finally:
        control_plane.stop_scheduler()
        front.stop()
        for e in extenders:
            e.stop()
        k8s.reset(env.api)
        k8s.request(env.api, "DELETE", REPORTS)
        k8s.request(env.api, "DELETE", LEASE)
        env.api.close()


def lease_holder(env: Env) -> str:
    return str(k8s.request(env.api, "GET", LEASE)["spec"].get("holderIdentity") or "")


def metric(extender: Extender, name: str) -> float:
    for line in extender.get("/metrics").decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def forwarded(extender: Extender) -> float:
    text = extender.get("/metrics").decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gpusched_extender_forwarded_total{")
    )


class BindTimes(threading.Thread):
    """When each pod was first seen bound, from a watch (a bind is never missed between polls)."""

    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.env.cluster.api_client() as api:
                for event in k8s.watch(api, "/api/v1/namespaces/default/pods", timeout=30):
                    pod = event.get("object") or {}
                    name = (pod.get("metadata") or {}).get("name")
                    if name and (pod.get("spec") or {}).get("nodeName") and name not in self.seen:
                        self.seen[name] = time.monotonic()
                    if self.stopping.is_set():
                        return


def test_the_standby_takes_over_when_the_leader_is_killed(replicas: tuple[Env, list[Extender], Front]) -> None:
    env, extenders, front = replicas
    for n in range(NODES):
        env.node(f"gpu-{n}", GPUS_PER_NODE)
    by_identity = {f"replica-{i}": e for i, e in enumerate(extenders)}
    leader = by_identity[k8s.wait_until(lambda: lease_holder(env) or None, timeout=60, what="a Lease holder")]
    (standby,) = [e for e in extenders if e is not leader]
    env.wait_for(lambda: metric(leader, "gpusched_extender_leader") == 1, "the leader to say so")
    assert metric(standby, "gpusched_extender_leader") == 0
    env.wait_for(lambda: len(front.ready) == 2, "both replicas Ready in the front")

    binds = BindTimes(env)
    binds.start()
    for i in range(PODS):
        env.pod(f"burst-{i:02d}", 1)
        if i == PODS // 4:  # some placed, most still to come: kill the leader mid-burst
            env.wait_for(lambda: len(binds.seen) >= 4, "the first pods of the burst to be bound", timeout=120)
            assert leader.proc is not None
            os.killpg(leader.proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            bound_before = len(binds.seen)
    env.wait_for(lambda: len(binds.seen) == PODS, f"all {PODS} pods bound", timeout=180)
    binds.stopping.set()

    # Only the new leader can bind a pod created after the kill (a bind the old leader had in flight
    # may still land just after it), so the first of those bound bounds the failover from above.
    created_after = [f"burst-{i:02d}" for i in range(PODS // 4 + 1, PODS)]
    failover = min(binds.seen[name] for name in created_after) - killed_at
    print(
        f"failover: a pod created after SIGKILL of the leader bound {failover:.1f} s after it ({bound_before} before)"
    )
    assert failover < FAILOVER_LIMIT_S
    assert lease_holder(env) == next(k for k, e in by_identity.items() if e is standby)
    assert metric(standby, "gpusched_extender_leader") == 1
    # Before the kill the standby's share of the calls went to the leader.
    assert forwarded(standby) > 0

    # Nothing double-booked: per node, the bound pods' GPUs fit its allocatable, and no GPU id twice.
    requested: dict[str, int] = defaultdict(int)
    ids: dict[str, list[str]] = defaultdict(list)
    for pod in env.pods():
        node = pod["spec"]["nodeName"]
        requested[node] += sum(
            int(parse_quantity(c["resources"]["limits"]["nvidia.com/gpu"])) for c in pod["spec"]["containers"]
        )
        ids[node] += [i for i in pod["metadata"].get("annotations", {}).get("gpusched.io/gpu-ids", "").split(",") if i]
    for node in requested:
        allocatable = int(
            k8s.request(env.api, "GET", f"/api/v1/nodes/{node}")["status"]["allocatable"]["nvidia.com/gpu"]
        )
        assert requested[node] <= allocatable, (node, requested[node], allocatable)
        assert len(ids[node]) == len(set(ids[node])), f"{node}: a GPU handed out twice: {sorted(ids[node])}"
    assert sum(requested.values()) == PODS
