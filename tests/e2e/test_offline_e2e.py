"""`gpusched-extender --cluster-file`, the process a user starts to try gpusched against a scenario
file, spoken to over HTTP as kube-scheduler speaks to it: a pod its filter saw can be bound, the
bind holds the GPUs for good (no informer will ever confirm it), and the next pod finds them taken."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from scheduler.core.scenario import pod_object
from tests.prometheus import free_port

pytestmark = pytest.mark.e2e

SCENARIO = {
    "nodeTypes": {"dgx": {"gpus": 8, "gpuModel": "H100-80GB", "gpuMemory": "80Gi", "interconnect": "nvswitch"}},
    "nodes": [{"name": "h100-r1-{i}", "count": 1, "type": "dgx"}],
}


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[httpx.Client]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    port = free_port("127.0.0.1")
    log = (tmp_path / "extender.log").open("ab")
    argv = [sys.executable, "-m", "scheduler.extender.cli", f"--cluster-file={scenario}", "--host=127.0.0.1"]
    proc = subprocess.Popen([*argv, f"--port={port}"], stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "extender.log").read_text()
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the offline extender never became ready"
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_an_offline_bind_holds_the_gpus_and_the_next_pod_finds_them_taken(offline: httpx.Client) -> None:
    nodes = ["h100-r1-0"]
    first, second = pod_object({"name": "b1", "gpus": 8}), pod_object({"name": "b2", "gpus": 8})
    for obj in (first, second):
        obj["spec"].pop("nodeName", None)
    passed = offline.post("/filter", json={"Pod": first, "Nodes": None, "NodeNames": nodes}).json()
    assert passed["NodeNames"] == nodes, passed
    bind = {"PodName": "b1", "PodNamespace": "default", "PodUID": "uid-b1", "Node": nodes[0]}
    bound = offline.post("/bind", json=bind)
    assert not bound.json().get("Error"), bound.text
    refused = offline.post("/filter", json={"Pod": second, "Nodes": None, "NodeNames": nodes}).json()
    assert refused["NodeNames"] == [] and "h100-r1-0" in refused["FailedNodes"], refused
    again = offline.post("/bind", json={**bind, "PodName": "b2", "PodUID": "uid-b2"})
    assert "no longer fits h100-r1-0" in again.json()["Error"]
    explained = offline.get("/explain/default/b1").json()
    assert explained["boundTo"] == "h100-r1-0"
