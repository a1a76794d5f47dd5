"""Agents publish reports from fake NVML; the extender places by them and stops trusting a node
whose agent stopped (freshness rule: a report older than reportTTLSeconds turns the node away)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import k8s
from scheduler.core.objects import parse_time
from tests.e2e.gpusched_env import REPORTS, Env

LEASES = "/apis/coordination.k8s.io/v1/namespaces/gpusched-system/leases"

pytestmark = pytest.mark.e2e


class Agents:
    def __init__(self, env: Env, workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str, machine: str) -> None:
        log = (self.workdir / f"agent-{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpu_agent.cli",
                "--fake-nvml",
                machine,
                "--node-name",
                node,
                "--kubeconfig",
                str(self.env.cluster.kubeconfig_path),
                "--heartbeat",
                "1",
                "--interval",
                "0.5",
                "--min-write-interval",
                "0.5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.terminate()
        proc.wait(10)

    def stop_all(self) -> None:
        for node in list(self.procs):
            self.stop(node)


@pytest.fixture
def agents(gpusched: Env, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(gpusched, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def report_time(env: Env, node: str) -> str | None:
    try:
        return str(k8s.request(env.api, "GET", f"{REPORTS}/{node}")["spec"]["reportTime"])
    except Exception:
        return None


def lease_renewed(env: Env, node: str) -> float | None:
    """When the agent last renewed its node's Lease (the extender counts that as alive too)."""
    try:
        lease = k8s.request(env.api, "GET", f"{LEASES}/{node}")
    except Exception:
        return None
    return parse_time(lease["spec"].get("renewTime"))


@pytest.mark.gpusched_config({"reportTTLSeconds": 4})
def test_extender_places_by_agent_reports_and_turns_away_stale_nodes(gpusched: Env, agents: Agents) -> None:
    gpusched.cluster.create_gpu_node("dgx", 8)
    gpusched.cluster.create_gpu_node("l4box", 4)
    agents.start("dgx", "dgx-h100")
    agents.start("l4box", "l4x4")
    for node in ("dgx", "l4box"):
        gpusched.wait_for(lambda n=node: report_time(gpusched, n), f"{node}'s report")

    # Only the agent's report says which node has 80 GB GPUs and NVSwitch.
    gpusched.pod("big", 1, annotations={"gpusched.io/gpu-memory": "60Gi"})
    assert gpusched.wait_bound("big") == "dgx"
    gpusched.pod("eight-h100", 4, annotations={"gpusched.io/gpu-models": "NVIDIA H100 80GB HBM3"})
    assert gpusched.wait_bound("eight-h100") == "dgx"

    agents.stop("dgx")
    frozen = report_time(gpusched, "dgx")
    reported = parse_time(frozen)
    assert reported is not None
    # The node was last seen alive at its last report write or Lease renewal, whichever is later
    # (reports are written only when they change, the Lease every heartbeat).
    stamp = max(reported, lease_renewed(gpusched, "dgx") or reported)
    gpusched.wait_for(lambda: time.time() - stamp > 5, "the node to outlive its 4 s TTL", timeout=30)
    gpusched.pod("late", 1, annotations={"gpusched.io/gpu-memory": "60Gi"})
    gpusched.wait_for(
        lambda: any("GPUNodeReport is stale" in e for e in gpusched.events_for("late")), "a stale-report event"
    )
    assert not gpusched.get_pod("late")["spec"].get("nodeName")
    assert report_time(gpusched, "dgx") == frozen
    # A pod the fresh node can serve still lands there.
    gpusched.pod("small", 1)
    assert gpusched.wait_bound("small") == "l4box"

    # The agent comes back: its node is trusted again and the waiting pod lands.
    agents.start("dgx", "dgx-h100")
    assert gpusched.wait_bound("late", timeout=60) == "dgx"
