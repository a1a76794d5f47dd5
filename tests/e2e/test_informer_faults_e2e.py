"""The extender's view of the cluster goes stale and heals, against the real control plane: its
connections to kube-apiserver are cut (a TCP proxy between them), then kube-apiserver itself is
restarted. Meanwhile /readyz answers 503 naming the stale views and kube-scheduler's filter calls
get an Error, so a pod created during the cut is not bound; once the views are current again it is.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from localcluster.cluster import LocalCluster, free_port
from tests.e2e.gpusched_env import CRDS, FAST_BACKOFF, Env, Extender

pytestmark = pytest.mark.e2e

WAIT_S = 180.0  # generous: the machine may be loaded; every wait ends on a positive signal


class Proxy:
    """TCP on loopback from `port` to kube-apiserver. cut() stops listening and closes every
    connection (the extender's watches break, its reconnects are refused); restore() listens again
    on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self.listener is not None
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self.listener = None
        with self.lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                _close(client)  # kube-apiserver is down: the client sees its connection end
                continue
            with self.lock:
                self.connections |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (src, dst):
                _close(conn)
            with self.lock:
                self.connections -= {src, dst}


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def readyz(extender: Extender) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{extender.url}/readyz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Env, Proxy]]:
    """A control plane of this test's own (its kube-apiserver is restarted), the extender reaching
    it through the proxy, and kube-scheduler wired to the extender."""
    with LocalCluster(tmp_path / "control-plane") as control_plane:
        control_plane.apply_crds(CRDS)
        proxy = Proxy(control_plane.apiserver_port)
        kubeconfig = yaml.safe_load(control_plane.kubeconfig_path.read_text())
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        proxied = tmp_path / "extender-kubeconfig"
        proxied.write_text(yaml.safe_dump(kubeconfig))
        extender = Extender(control_plane, tmp_path, {"informerGraceSeconds": 1}, args=["--kubeconfig", str(proxied)])
        extender.start(timeout=WAIT_S)
        env = Env(control_plane, extender)
        try:
            control_plane.start_scheduler(extender.url, extender_config={}, scheduler_config=FAST_BACKOFF)
            yield env, proxy
        finally:
            control_plane.stop_scheduler()
            extender.stop()
            if proxy.listener is not None:
                proxy.cut()
            env.api.close()


def stale(env: Env) -> str | None:
    """/readyz's body while it answers 503 naming the Pod informer's view, else None."""
    status, body = readyz(env.extender)
    return body if status == 503 and body.startswith("stale views: ") and "pods" in body.split("(")[0] else None


def test_a_stale_view_places_no_pod_and_heals(cluster: tuple[Env, Proxy]) -> None:
    env, proxy = cluster
    env.node("gpu-0", 4)
    env.pod("before", 1)
    assert env.wait_bound("before", timeout=WAIT_S) == "gpu-0"

    # 1. The extender's connections are cut; the API server and kube-scheduler carry on.
    proxy.cut()
    body = env.wait_for(lambda: stale(env), "/readyz 503 naming the stale views", timeout=WAIT_S)
    assert "failing for" in body, body
    env.pod("during", 1)  # created while gpusched's view is stale: it must not be placed from it
    refused = env.wait_for(
        lambda: [e for e in env.events_for("during") if e.startswith("FailedScheduling") and "stale view" in e],
        "kube-scheduler's FailedScheduling with gpusched's stale-view Error",
        timeout=WAIT_S,
    )
    assert "nodes, pods" in refused[0], refused  # every view it lists from the API server is named
    assert not env.get_pod("during")["spec"].get("nodeName")  # refused, so kube-scheduler bound nothing

    proxy.restore()
    env.wait_for(lambda: readyz(env.extender) == (200, "ok"), "/readyz 200 again", timeout=WAIT_S)
    assert env.wait_bound("during", timeout=WAIT_S) == "gpu-0"

    # 2. kube-apiserver itself goes away and comes back on the same port.
    env.cluster.stop_apiserver()
    env.wait_for(lambda: stale(env), "/readyz 503 while kube-apiserver is down", timeout=WAIT_S)
    env.cluster.start_apiserver()
    env.wait_for(lambda: readyz(env.extender) == (200, "ok"), "/readyz 200 after the restart", timeout=WAIT_S)
    env.pod("after", 1)
    assert env.wait_bound("after", timeout=WAIT_S) == "gpu-0"  # the watches resumed: "during" is seen bound

    metrics = env.extender.get("/metrics").decode()
    restarts = [
        line
        for line in metrics.splitlines()
        if line.startswith('gpusched_watch_restarts_total{reason="connection",resource="pods"}')
    ]
    assert restarts and float(restarts[0].split()[-1]) >= 2, restarts  # once per outage at least
