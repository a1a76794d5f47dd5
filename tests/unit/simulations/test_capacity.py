import json
from pathlib import Path

import pytest

from scheduler.core.scenario import ScenarioError
from simulations.capacity import find_need, lateness
from simulations.cli import main
from simulations.whatif import compare
from tests.unit.simulations.test_whatif import DEMO, SMALL

# Draining the second H100 rack leaves h100-r1: 8 nodes, one running eval-0 (1 GPU).
DRAIN_H100_R2 = [arg for i in range(8) for arg in ("--drain", f"h100-r2-{i}")]


def test_lateness_counts_pods_of_jobs_that_start_too_late() -> None:
    (ours,) = compare(SMALL, ["gpusched"])
    # "late" (2 members) arrives at 20 and starts at 110: 90 s, 60 s too late for T = 30, x 2 pods.
    late = lateness(ours, 30.0)
    assert (late.pods, late.seconds, late.late_jobs) == (2, 2 * 60.0, ("late",))
    assert lateness(ours, 90.0).pods == 0


def test_need_on_a_small_scenario() -> None:
    # Four 1-GPU services share r1-0, "gang" takes rack r2, so "late" finds only r1-1 whole: one
    # more 8-GPU node lets it start on arrival.
    need = find_need(SMALL, 0.0)
    assert need.found and need.added == {"big": 1} and need.gpus == 8
    assert need.late.pods == 0
    # Waiting 90 s is allowed with T = 90: nothing to add.
    assert find_need(SMALL, 90.0).added == {}


def test_need_reports_when_no_set_suffices() -> None:
    scenario = {**SMALL, "workload": [{"name": "huge", "kind": "inference", "gpus": 16}]}  # no node has 16 GPUs
    need = find_need(scenario, 0.0, max_nodes=4)
    assert not need.found and need.late.late_jobs == ("huge-0",)
    assert any("16 GPU" in r for r in need.late.reasons)
    with pytest.raises(ScenarioError, match="--within"):
        find_need(SMALL, -1.0)


def test_need_on_the_demo_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Without h100-r2: pretrain-70b (7 x 8 GPUs, 300 s to 7,500 s) takes h100-r1's 7 whole nodes, and
    # finetune-70b (4 x 8 H100 GPUs) arrives at 900 s: 4 more dgx-h100 nodes, 32 GPUs.
    assert main(["whatif", str(DEMO), "--need", "--json", *DRAIN_H100_R2]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["found"] and body["added_nodes"] == {"dgx-h100": 4} and body["added_gpus"] == 32
    # Allowed to wait 6,600 s, finetune-70b starts when pretrain-70b ends (900 + 6,600 = 7,500): none needed.
    assert main(["whatif", str(DEMO), "--need", "--within", "6600", *DRAIN_H100_R2]) == 0
    assert "no nodes need to be added" in " ".join(capsys.readouterr().out.split())
    assert main(["whatif", str(DEMO), "--need", *DRAIN_H100_R2]) == 0
    out = capsys.readouterr().out
    assert "dgx-h100" in out and "32" in out


def test_need_needs_node_types(tmp_path: Path) -> None:
    path = tmp_path / "bare.yaml"
    path.write_text("nodes: [{name: n, gpus: 1}]\n")
    assert main(["whatif", str(path), "--need"]) == 2
