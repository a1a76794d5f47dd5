"""A 2-node DeepSpeed run on one machine: two pods' launchers -> torchrun -> trainer, gloo on CPU.

Each "pod" gets its own downward-API annotations file. The planned ranks are deliberately the
reverse of the completion indexes, so the run also shows the launcher orders nodes by gpusched's
plan. The ranks must end with identical parameters (ZeRO-2 partitions the optimiser state, so any
slip in the reduce-scatter or all-gather shows up as a checksum mismatch) and a finite loss.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_train_to_identical_parameters(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "results"
    procs: list[tuple[int, subprocess.Popen[str]]] = []
    for index, planned_rank in ((0, 0), (1, 1)):  # gpusched plans rank = completion index
        annotations = tmp_path / f"annotations-{index}"
        annotations.write_text(
            f'gpusched.io/rank="{planned_rank}"\n'
            f'gpusched.io/planned-node="node-{planned_rank}"\n'
            f'gpusched.io/topology-path="zone-a/rack-1/node-{planned_rank}"\n'
            'gpusched.io/min-member="2"\n'
        )
        env = {
            **os.environ,
            "JOB_COMPLETION_INDEX": str(index),
            "NNODES": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_NAME": f"node-{planned_rank}",
            "CUDA_VISIBLE_DEVICES": "",  # CPU and gloo even where a GPU exists
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        cmd = [
            sys.executable,
            "-m",
            "workloads.training.launch",
            "--annotations",
            str(annotations),
            "--",
            "--zero-stage",
            "2",
            "--steps",
            "4",
            "--output-dir",
            str(out),
        ]
        procs.append(
            (
                index,
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            )
        )
    logs: dict[int, str] = {}
    try:
        for index, proc in procs:
            logs[index] = proc.communicate(timeout=TIMEOUT_S)[0]
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for index, proc in procs:
        assert proc.returncode == 0, f"pod {index} exited {proc.returncode}:\n{logs[index][-4000:]}"

    results = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["zero_stage"] == 2 and r["backend"] == "gloo" for r in results)
    assert results[0]["checksum"] == results[1]["checksum"]
    assert results[0]["param_sum"] == results[1]["param_sum"]
    assert all(r["replicas_consistent"] for r in results)
    for r in results:
        assert len(r["losses"]) == 4 and all(math.isfinite(v) for v in r["losses"])
    assert results[0]["losses"] == results[1]["losses"]  # the logged loss is the all-reduced mean
    assert results[0]["node_rank"] == "0" and results[0]["topology_path"] == "zone-a/rack-1/node-0"
    assert results[1]["topology_path"] == "zone-a/rack-1/node-1"
    assert "RESULT " in logs[0] and "RESULT " in logs[1]
