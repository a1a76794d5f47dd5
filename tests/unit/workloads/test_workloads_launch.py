"""The launcher's placement arithmetic: downward-API parsing and torchrun arguments."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from workloads.training import launch
from workloads.training.launch import LaunchError, LaunchPlan, parse_downward_file, plan_launch

BASE_ENV = {"NNODES": "4", "MASTER_ADDR": "gpt-train-0.gpt-train", "MASTER_PORT": "29500"}


def test_parse_downward_file_decodes_go_quoting() -> None:
    text = "\n".join(
        [
            'gpusched.io/rank="2"',
            'gpusched.io/topology-path="zone-a/block-1/rack-3/node-7"',
            'kubectl.kubernetes.io/last-applied-configuration="{\\"a\\":\\"b\\\\c\\"}\\n"',
            'note="caf\\u00e9 \\x41\\t\\101"',
            "bare=value",
            "no equals sign here",
            'broken="\\q"',
            "",
        ]
    )
    parsed = parse_downward_file(text)
    assert parsed["gpusched.io/rank"] == "2"
    assert parsed["gpusched.io/topology-path"] == "zone-a/block-1/rack-3/node-7"
    assert parsed["kubectl.kubernetes.io/last-applied-configuration"] == '{"a":"b\\c"}\n'
    assert parsed["note"] == "café A\tA"
    assert parsed["bare"] == "value"
    assert "broken" not in parsed
    assert len(parsed) == 5


def test_read_annotations_missing_file_is_empty(tmp_path: Path) -> None:
    assert launch.read_annotations(tmp_path / "absent") == {}


@pytest.mark.parametrize(
    ("env", "annotations", "rank", "source"),
    [
        ({"JOB_COMPLETION_INDEX": "3"}, {}, 3, "JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "3"}, {"gpusched.io/rank": "3"}, 3, "gpusched.io/rank"),
        ({}, {"gpusched.io/rank": "2"}, 2, "gpusched.io/rank"),
        ({}, {"batch.kubernetes.io/job-completion-index": "0"}, 0, "batch.kubernetes.io/job-completion-index"),
        (
            {"JOB_COMPLETION_INDEX": " "},
            {"batch.kubernetes.io/job-completion-index": "2"},
            2,
            "batch.kubernetes.io/job-completion-index",
        ),
    ],
)
def test_node_rank_prefers_the_planned_rank(
    env: dict[str, str], annotations: dict[str, str], rank: int, source: str
) -> None:
    plan = plan_launch({**BASE_ENV, **env}, annotations, gpus_visible=8)
    assert (plan.node_rank, plan.rank_source) == (rank, source)
    assert plan.nnodes == 4 and plan.nproc_per_node == 8


@pytest.mark.parametrize(
    ("env", "annotations"),
    [
        ({"JOB_COMPLETION_INDEX": "0"}, {"gpusched.io/rank": "3"}),
        ({}, {"batch.kubernetes.io/job-completion-index": "2", "gpusched.io/rank": "0"}),
    ],
)
def test_planned_rank_that_differs_from_the_index_fails(env: dict[str, str], annotations: dict[str, str]) -> None:
    """MASTER_ADDR names index 0's pod: a rank 0 elsewhere would start a second rendezvous."""
    with pytest.raises(LaunchError, match="differs from the completion index"):
        plan_launch({**BASE_ENV, **env}, annotations, 8)


@pytest.mark.parametrize(
    ("gpu_ids", "usable", "fails"),
    [
        ("0,1,2,3", 4, False),
        ("0,1,2,3", 8, False),  # NPROC_PER_NODE unset: one process per usable GPU
        ("0,1,2,3", 3, True),  # the device plugin exposed 3
        ("5", 0, True),  # CUDA failed to initialise: never train on the CPU
        ("", 0, False),  # not placed by gpusched: nothing to check against
    ],
)
def test_fewer_usable_gpus_than_given_fails(gpu_ids: str, usable: int, fails: bool) -> None:
    env = {**BASE_ENV, "JOB_COMPLETION_INDEX": "0"}
    annotations = {"gpusched.io/gpu-ids": gpu_ids}
    if fails:
        with pytest.raises(LaunchError, match=f"given {len(gpu_ids.split(','))} GPUs .* CUDA can use {usable}"):
            plan_launch(env, annotations, usable)
    else:
        assert plan_launch(env, annotations, usable).nproc_per_node == max(usable, 1)


def test_node_count_falls_back_to_min_member_then_one() -> None:
    env = {"JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "m"}
    assert plan_launch(env, {"gpusched.io/min-member": "2"}, 0).nnodes == 2
    single = plan_launch({}, {}, 0)
    assert (single.nnodes, single.node_rank, single.master_addr, single.master_port) == (1, 0, "127.0.0.1", 29500)
    assert single.rank_source == "single node"


@pytest.mark.parametrize(
    ("env", "gpus", "nproc"),
    [({}, 8, 8), ({}, 0, 1), ({"NPROC_PER_NODE": "2"}, 8, 2), ({"NPROC_PER_NODE": "auto"}, 4, 4)],
)
def test_processes_per_node(env: dict[str, str], gpus: int, nproc: int) -> None:
    assert plan_launch({**BASE_ENV, "JOB_COMPLETION_INDEX": "0", **env}, {}, gpus).nproc_per_node == nproc


@pytest.mark.parametrize(
    ("env", "annotations", "message"),
    [
        ({"JOB_COMPLETION_INDEX": "4"}, {}, "not below the node count 4"),
        ({}, {"gpusched.io/rank": "9"}, "not below the node count 4"),
        ({}, {}, "no rank"),
        ({"JOB_COMPLETION_INDEX": "x"}, {}, "JOB_COMPLETION_INDEX: 'x' is not a whole number"),
        ({"JOB_COMPLETION_INDEX": "-1"}, {}, "below 0"),
        ({"JOB_COMPLETION_INDEX": "0", "NNODES": "0"}, {}, "NNODES: 0 is below 1"),
        ({"JOB_COMPLETION_INDEX": "0", "MASTER_ADDR": ""}, {}, "need MASTER_ADDR"),
        ({"JOB_COMPLETION_INDEX": "0", "MASTER_PORT": "http"}, {}, "MASTER_PORT"),
        ({"JOB_COMPLETION_INDEX": "0", "NPROC_PER_NODE": "0"}, {}, "NPROC_PER_NODE"),
        ({"JOB_COMPLETION_INDEX": "0"}, {"gpusched.io/rank": "one"}, "gpusched.io/rank"),
    ],
)
def test_invalid_placements_raise_clear_errors(env: dict[str, str], annotations: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        plan_launch({**BASE_ENV, **env}, annotations, 1)


def test_planned_node_mismatch_is_a_warning_not_an_error() -> None:
    annotations = {
        "gpusched.io/rank": "0",
        "gpusched.io/planned-node": "node-a",
        "gpusched.io/topology-path": "z/b/r/node-a",
    }
    plan = plan_launch({**BASE_ENV, "NODE_NAME": "node-b"}, annotations, 1)
    assert plan.warnings == ("planned for node node-a but running on node-b",)
    assert plan.extra_env() == {
        "GPUSCHED_NODE_RANK": "0",
        "GPUSCHED_PLANNED_NODE": "node-a",
        "GPUSCHED_TOPOLOGY_PATH": "z/b/r/node-a",
    }


def test_torchrun_command() -> None:
    plan = LaunchPlan(nnodes=2, node_rank=1, nproc_per_node=8, master_addr="m.svc", master_port=1234, rank_source="x")
    assert launch.build_command(plan, ["--steps", "3"], python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--node-rank=1",
        "--nproc-per-node=8",
        "--master-addr=m.svc",
        "--master-port=1234",
        "--max-restarts=0",
        "-m",
        "workloads.training.train",
        "--steps",
        "3",
    ]


@pytest.mark.parametrize("value", ["", "-1", " "])
def test_visible_gpus_none_when_cuda_visible_devices_names_none(value: str) -> None:
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == 0


def test_main_fails_when_cuda_can_use_fewer_gpus_than_the_pod_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CUDA_VISIBLE_DEVICES names GPUs, but CUDA itself decides: one more GPU than it can use here."""
    import torch

    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    given = ",".join(str(i) for i in range(usable + 1))
    ann = tmp_path / "annotations"
    ann.write_text(f'gpusched.io/gpu-ids="{given}"\n')
    for key in ("NNODES", "NPROC_PER_NODE", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", given)
    assert launch.main(["--annotations", str(ann), "--dry-run"]) == 2
    assert f"given {usable + 1} GPUs" in capsys.readouterr().err


def test_main_dry_run_prints_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = tmp_path / "annotations"
    ann.write_text('gpusched.io/rank="1"\ngpusched.io/min-member="2"\n')
    for key in ("NNODES", "NPROC_PER_NODE", "JOB_COMPLETION_INDEX", "MASTER_PORT", "NODE_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.main(["--annotations", str(ann), "--dry-run", "--", "--zero-stage", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["node_rank"] == 1 and out["plan"]["nnodes"] == 2 and out["plan"]["nproc_per_node"] == 1
    assert out["command"][0] == sys.executable
    assert out["command"][-3:] == ["workloads.training.train", "--zero-stage", "1"]


def test_main_reports_launch_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert launch.main(["--annotations", str(tmp_path / "none"), "--dry-run"]) == 2
    assert "no rank" in capsys.readouterr().err
