"""The agent's loop end to end in one process or as the real command: sampling, writes on change
and heartbeat, an API that goes away and comes back, and /metrics over HTTP."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpu_agent import fake_nvml
from gpu_agent.agent import Agent, AgentConfig
from gpu_agent.fake_kubelet import FakeKubelet
from gpu_agent.metrics import serve
from gpu_agent.nvml_reader import NvmlReader, NvmlReadError
from gpu_agent.podresources.client import PodResourcesClient
from gpu_agent.publisher import Backoff, KubernetesSink, MemorySink, Publisher
from tests.builders import kubeconfig

REPO = Path(__file__).resolve().parents[2]


class Recorder(MemorySink):
    @property
    def writes(self) -> list[tuple[float, dict[str, Any]]]:
        return self.reports


class CountingReader(NvmlReader):
    """The fake NVML's reader, counting the agent's samples, with a switch that makes device
    enumeration fail (the counts are what the tests wait on instead of sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.reads = 0  # samples begun
        self.failed = 0  # samples that failed

    def read(self) -> Any:
        self.reads += 1
        if self.failing:
            self.errors["Unknown"] += 1
            self.failed += 1
            raise NvmlReadError("nvmlDeviceGetCount failed: Unknown")
        return super().read()


@pytest.fixture
def reader() -> Iterator[CountingReader]:
    fake_nvml.activate("hgx-a100-40gb")
    r = CountingReader()
    r.open()
    try:
        yield r
    finally:
        r.close()
        fake_nvml.deactivate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_agent(agent: Agent) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_loop_renews_the_lease_every_heartbeat_and_writes_the_report_once(reader: NvmlReader) -> None:
    sink = Recorder()
    publisher = Publisher(sink, heartbeat=0.5, min_interval=0.1, refresh=3600)
    agent = Agent(AgentConfig(node_name="a100-1", interval=0.1, disk_probe_bytes=0), reader, publisher=publisher)
    stop, thread = run_agent(agent)
    try:
        wait_for(lambda: len(sink.leases) >= 4, 10, "four Lease renewals")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    times = [t for t, _ in sink.leases]
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(times))  # no faster than the heartbeat
    assert len(sink.writes) == 1  # the report did not change: written once


def test_loop_writes_a_change_at_once(reader: CountingReader) -> None:
    uuids = [g.uuid for g in reader.read().gpus]
    with tempfile.TemporaryDirectory(prefix="gpusched-") as d, FakeKubelet(Path(d) / "k.sock") as kubelet:
        client = PodResourcesClient(str(Path(d) / "k.sock"))
        sink = Recorder()
        publisher = Publisher(sink, heartbeat=3600, min_interval=0.2)
        agent = Agent(
            AgentConfig(node_name="a100-1", interval=0.1, disk_probe_bytes=0), reader, pods=client, publisher=publisher
        )
        stop, thread = run_agent(agent)
        try:
            wait_for(lambda: len(sink.writes) >= 1, 10, "the first write")
            # Five more samples, each offered to the publisher and followed by a publish check, spanning
            # more than min_interval: a write of an unchanged report would have gone out by now.
            seen = reader.reads
            wait_for(lambda: reader.reads >= seen + 5, 10, "five more samples")
            assert len(sink.writes) == 1  # nothing changed, the heartbeat is an hour away
            kubelet.assign("ml/train-7", "nvidia.com/gpu", uuids[:2])
            wait_for(lambda: len(sink.writes) == 2, 10, "the write of the new pod")
        finally:
            stop.set()
            thread.join(5)
            client.close()
    assert [g.get("pods") for g in sink.writes[1][1]["spec"]["gpus"]][:3] == [["ml/train-7"], ["ml/train-7"], []]


def test_nvml_failure_stops_refreshing_the_report_and_recovery_resumes_it() -> None:
    fake_nvml.activate("l4x4")
    reader = CountingReader()
    reader.open()
    sink = Recorder()
    publisher = Publisher(sink, heartbeat=0.3, min_interval=0.05, refresh=0.3)
    agent = Agent(AgentConfig(node_name="l4", interval=0.1, disk_probe_bytes=0), reader, publisher=publisher)
    stop, thread = run_agent(agent)
    try:
        wait_for(lambda: len(sink.leases) >= 2, 10, "Lease renewals")
        reader.failing = True
        # Once a read has failed no report is offered any more; a report made before the failure
        # may still be due: wait until the publisher has nothing left to write.
        wait_for(lambda: reader.failed >= 1 and publisher.due_in() is None, 10, "the last report to go out")
        written, failed = len(sink.writes), reader.failed
        # Fifteen failed samples (five heartbeats at least), each followed by a publish check.
        wait_for(lambda: reader.failed >= failed + 15, 10, "fifteen failed samples")
        assert len(sink.writes) == written  # no fresh report, and the last one is not rewritten
        renewed = len(sink.leases)
        seen = reader.failed
        wait_for(lambda: reader.failed >= seen + 10, 10, "ten more failed samples")
        assert len(sink.leases) == renewed  # the Lease lapses: the node goes stale
        assert agent.state.source_errors["nvml"] >= 15 and thread.is_alive()
        reader.failing = False
        wait_for(lambda: len(sink.leases) > renewed, 10, "renewals after NVML recovers")
    finally:
        stop.set()
        thread.join(5)
        reader.close()
        fake_nvml.deactivate()


class FakeApi(BaseHTTPRequestHandler):
    """Accepts server-side applies of GPUNodeReports and Leases and remembers them; answers GET of
    a Node with its uid."""

    applied: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        name = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
        answer = json.dumps({"kind": "Node", "metadata": {"name": name, "uid": f"uid-{name}"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        url = urllib.parse.urlsplit(self.path)
        self.applied.append(
            {
                "path": url.path,
                "query": dict(urllib.parse.parse_qsl(url.query)),
                "contentType": self.headers["Content-Type"],
                "auth": self.headers["Authorization"],
                "body": json.loads(body),
            }
        )
        answer = json.dumps(json.loads(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return None


def test_api_outage_then_recovery_publishes_the_latest_report(reader: NvmlReader, tmp_path: Path) -> None:
    port = free_port()
    config = kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", token="agent-token")
    sink = KubernetesSink(str(config), timeout=(0.5, 2))
    publisher = Publisher(sink, heartbeat=30, min_interval=0.05, backoff=Backoff(initial=0.05, maximum=0.4, jitter=0))
    agent = Agent(AgentConfig(node_name="a100-2", interval=0.1, disk_probe_bytes=0), reader, publisher=publisher)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    FakeApi.applied = []
    server = None
    try:
        wait_for(lambda: publisher.stats.writes_failed >= 3, 10, "failed writes while the API is down")
        assert thread.is_alive() and publisher.stats.writes_ok == 0
        server = ThreadingHTTPServer(("127.0.0.1", port), FakeApi)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        wait_for(lambda: len(FakeApi.applied) >= 2, 10, "the report and the Lease once the API is back")
        latest_time = agent.state.report["spec"]["reportTime"] if agent.state.report else None
    finally:
        stop.set()
        thread.join(5)
        sink.close()
        if server is not None:
            server.shutdown()
    first = FakeApi.applied[0]
    assert first["path"] == "/apis/gpusched.io/v1alpha1/gpunodereports/a100-2"
    assert first["query"] == {"fieldManager": "gpusched-agent", "force": "true"}
    assert first["contentType"] == "application/apply-patch+yaml"
    assert first["auth"] == "Bearer agent-token"
    assert first["body"]["spec"]["gpuCount"] == 8
    assert first["body"]["spec"]["reportTime"] <= (latest_time or "")
    assert first["body"]["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "a100-2", "uid": "uid-a100-2"}
    ]
    lease = next(a for a in FakeApi.applied if "/leases/" in a["path"])
    assert lease["path"] == "/apis/coordination.k8s.io/v1/namespaces/gpusched-system/leases/a100-2"
    assert lease["body"]["spec"]["leaseDurationSeconds"] == 90
    assert publisher.stats.writes_ok >= 1 and publisher.backoff.attempts == 0


def test_metrics_endpoint_over_http(reader: NvmlReader) -> None:
    agent = Agent(AgentConfig(node_name="a100-3", disk_probe_bytes=0), reader)
    agent.collect()
    server = serve(agent, 0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    total = families["gpusched_agent_gpu_memory_total_bytes"].samples
    assert len(total) == 8 and {s.value for s in total} == {(40960 - 423) * 2**20}
    assert families["gpusched_agent_gpu_nvlink_active_links"].samples[0].value == 12
    util = {s.labels["gpu"]: s.value for s in families["gpusched_agent_gpu_utilization_ratio"].samples}
    assert util["2"] == 0.88 and util["0"] == 0.0


def test_the_command_loop_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpu_agent.cli",
            "--print",
            "--fake-nvml",
            "l4x4",
            "--node-name",
            "l4-box",
            "--interval",
            "0.2",
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
            "--hf-cache",
            str(tmp_path / "none"),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["spec"]["nodeName"] == "l4-box" and first["spec"]["gpuCount"] == 4

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return str(response.read().decode())
            except OSError:
                return None

        text = wait_for(scrape, 10, "/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"gpusched_agent_gpu_memory_used_bytes", "gpusched_agent_gpu_healthy"} <= names
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_agent_releases_nvml_for_a_gpu_operator_driver_upgrade(reader: CountingReader) -> None:
    """Finding 10: the upgrade controller's label asks GPU clients to let go of the driver."""
    import pynvml

    from gpu_agent.agent import DRIVER_UPGRADE_LABEL

    sink = MemorySink(node_uids={"a100-9": "uid-9"})
    publisher = Publisher(sink, heartbeat=30, min_interval=0, node_check=0)
    agent = Agent(AgentConfig(node_name="a100-9", disk_probe_bytes=0), reader, publisher=publisher)
    publisher.offer(agent.collect())
    publisher.publish_if_due()
    opened = reader.opened
    for state, released in [("upgrade-required", False), ("pod-restart-required", True), ("upgrade-done", False)]:
        sink.node_labels["a100-9"] = {DRIVER_UPGRADE_LABEL: state}
        publisher.publish_if_due()  # reads the Node (node_check 0: every time)
        if released:
            with pytest.raises(NvmlReadError, match="driver upgrade"):
                agent.collect()
            assert not reader.is_open and agent.state.sample is None
            with pytest.raises(pynvml.NVMLError_Uninitialized):  # nothing in this process holds NVML
                pynvml.nvmlDeviceGetCount()
        else:
            assert len(agent.collect()["spec"]["gpus"]) == 8 and reader.is_open
    assert reader.opened == opened + 1
