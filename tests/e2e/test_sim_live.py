"""gpusched-sim whatif --kubeconfig: snapshot the real cluster and answer where a manifest lands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from simulations.cli import main
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "big-model", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "template": {
            "metadata": {"annotations": {"gpusched.io/gpu-memory": "60Gi"}},
            "spec": {
                "schedulerName": "gpusched",
                "containers": [
                    {
                        "name": "server",
                        "image": "ghcr.io/acme/vllm:0.6",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            },
        },
    },
}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(args) == 0
    body: dict = json.loads(capsys.readouterr().out)
    return body


def test_where_a_manifest_would_land_and_what_a_drain_does(
    gpusched: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gpusched.node("h100-0", 8, model="H100-80GB", memory_gib=80)
    gpusched.node("h100-1", 8, model="H100-80GB", memory_gib=80)
    gpusched.node("l4-0", 4, model="L4", memory_gib=24, interconnect="pcie")
    gpusched.pod("running", 1, annotations={"gpusched.io/gpu-memory": "60Gi"})
    first = gpusched.wait_bound("running")
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(yaml.safe_dump(DEPLOYMENT))
    kubeconfig = str(gpusched.cluster.kubeconfig_path)

    body = run(
        ["whatif", "--kubeconfig", kubeconfig, "--manifest", str(manifest), "--policy", "gpusched", "--json"], capsys
    )
    placed = {p["name"]: p["node"] for p in body["policies"][0]["pods"]}
    assert set(placed) == {"big-model-0", "big-model-1"}
    assert set(placed.values()) <= {"h100-0", "h100-1"}

    # Drain the node the running pod is on: it must move to the other H100, and nothing is applied.
    body = run(["whatif", "--kubeconfig", kubeconfig, "--drain", first, "--policy", "gpusched", "--json"], capsys)
    moved = {p["name"]: p["node"] for p in body["policies"][0]["pods"]}
    assert moved == {"running": ({"h100-0", "h100-1"} - {first}).pop()}
    assert gpusched.get_pod("running")["spec"]["nodeName"] == first

    # Adding nodes like l4-0 gives more L4s but still no home for a 60Gi pod if the H100s are drained.
    body = run(
        [
            "whatif",
            "--kubeconfig",
            kubeconfig,
            "--drain",
            "h100-0",
            "--drain",
            "h100-1",
            "--add-nodes",
            "l4-0=2",
            "--policy",
            "gpusched",
            "--json",
        ],
        capsys,
    )
    pods = body["policies"][0]["pods"]
    assert pods[0]["node"] is None and "60.0GiB" in pods[0]["reason"]
    assert body["policies"][0]["gpus"] == 8 + 8 + 4 * 3
