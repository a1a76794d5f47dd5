"""Per-pod launcher: `python -m workloads.training.launch [--annotations FILE] [--dry-run] -- TRAIN_ARGS`.

Each pod of the Indexed Job (or JobSet) runs this once. It works out the pod's place in the gang
and execs torchrun, which starts one `workloads.training.train` process per local GPU:

- node rank: gpusched's planned rank (annotation `gpusched.io/rank`, read from the downward-API
  file), else the Job's completion index (env JOB_COMPLETION_INDEX, or the
  `batch.kubernetes.io/job-completion-index` annotation). gpusched plans rank = index and
  MASTER_ADDR names index 0's pod, so when both are present and differ the launch fails rather
  than start a second rank 0 or none.
- node count: env NNODES, else the gang size `gpusched.io/min-member`, else 1.
- master: env MASTER_ADDR / MASTER_PORT (the templates point them at rank 0's stable name behind
  the headless Service); with one node it defaults to 127.0.0.1.
- processes per node: env NPROC_PER_NODE, else the GPUs CUDA can use, else 1 on a CPU-only node.
- GPUs: a pod given GPUs (gpusched's `gpusched.io/gpu-ids`) fails to launch when CUDA can use fewer
  (the device plugin exposed fewer, or CUDA failed to initialise), instead of training on the CPU.

The planned node and topology path travel to the trainer as GPUSCHED_PLANNED_NODE and
GPUSCHED_TOPOLOGY_PATH so its logs say where the planner put it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ANNOTATIONS_FILE = "/etc/podinfo/annotations"
ANN_RANK = "gpusched.io/rank"
ANN_PLANNED_NODE = "gpusched.io/planned-node"
ANN_TOPOLOGY_PATH = "gpusched.io/topology-path"
ANN_MIN_MEMBER = "gpusched.io/min-member"
ANN_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ANN_GPU_IDS = "gpusched.io/gpu-ids"
DEFAULT_MASTER_PORT = 29500
TRAIN_MODULE = "workloads.training.train"


class LaunchError(ValueError):
    """The pod's environment and annotations do not describe a valid place in the gang."""


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34, "'": 39}


def _unquote_go(text: str) -> str:
    """Decode a Go strconv.Quote string body (the downward API writes values with %q)."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        if i + 1 >= len(text):
            raise ValueError("dangling backslash")
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif esc in "uU":
            width = 4 if esc == "u" else 8
            out += chr(int(text[i + 2 : i + 2 + width], 16)).encode()
            i += 2 + width
        elif esc in "01234567":
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return out.decode("utf-8", errors="replace")


def parse_downward_file(text: str) -> dict[str, str]:
    """Parse a downward-API annotations/labels file: one `key="quoted value"` per line.

    A malformed line is skipped rather than fatal: one odd annotation from another controller
    must not stop a training job from starting.
    """
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            try:
                result[key.strip()] = _unquote_go(raw[1:-1])
            except (ValueError, IndexError):
                continue
        else:
            result[key.strip()] = raw
    return result


def read_annotations(path: Path) -> dict[str, str]:
    """The pod's annotations, or {} when the downward-API volume is not mounted."""
    try:
        return parse_downward_file(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _int(value: str, what: str, minimum: int = 0) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise LaunchError(f"{what}: {value!r} is not a whole number") from None
    if number < minimum:
        raise LaunchError(f"{what}: {number} is below {minimum}")
    return number


@dataclass(frozen=True)
class LaunchPlan:
    """Where this pod sits in the gang, and how torchrun is told so."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    rank_source: str
    planned_node: str = ""
    topology_path: str = ""
    warnings: tuple[str, ...] = field(default=())

    def torchrun_args(self) -> list[str]:
        return [
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
            "--max-restarts=0",
        ]

    def extra_env(self) -> dict[str, str]:
        return {
            "GPUSCHED_NODE_RANK": str(self.node_rank),
            "GPUSCHED_PLANNED_NODE": self.planned_node,
            "GPUSCHED_TOPOLOGY_PATH": self.topology_path,
        }


def plan_launch(env: Mapping[str, str], annotations: Mapping[str, str], gpus_visible: int) -> LaunchPlan:
    """Compute the torchrun placement from the pod's env and annotations; pure, so it is unit-tested."""
    warnings: list[str] = []
    if env.get("NNODES", "").strip():
        nnodes = _int(env["NNODES"], "NNODES", 1)
    elif annotations.get(ANN_MIN_MEMBER, "").strip():
        nnodes = _int(annotations[ANN_MIN_MEMBER], ANN_MIN_MEMBER, 1)
    else:
        nnodes = 1

    index: int | None = None
    index_source = ""
    if env.get("JOB_COMPLETION_INDEX", "").strip():
        index, index_source = _int(env["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX"
    elif annotations.get(ANN_COMPLETION_INDEX, "").strip():
        index, index_source = _int(annotations[ANN_COMPLETION_INDEX], ANN_COMPLETION_INDEX), ANN_COMPLETION_INDEX

    if annotations.get(ANN_RANK, "").strip():
        node_rank, rank_source = _int(annotations[ANN_RANK], ANN_RANK), ANN_RANK
        if index is not None and index != node_rank:
            raise LaunchError(
                f"{ANN_RANK} {node_rank} differs from the completion index {index} ({index_source}); "
                "MASTER_ADDR names index 0's pod, so rank and index must agree"
            )
    elif index is not None:
        node_rank, rank_source = index, index_source
    elif nnodes == 1:
        node_rank, rank_source = 0, "single node"
    else:
        raise LaunchError(
            f"{nnodes} nodes but no rank: set JOB_COMPLETION_INDEX (an Indexed Job does) or the {ANN_RANK} annotation"
        )
    if node_rank >= nnodes:
        raise LaunchError(f"node rank {node_rank} ({rank_source}) is not below the node count {nnodes}")

    master_addr = env.get("MASTER_ADDR", "").strip()
    if not master_addr:
        if nnodes > 1:
            raise LaunchError(f"{nnodes} nodes need MASTER_ADDR (rank 0's name behind the headless Service)")
        master_addr = "127.0.0.1"
    master_port = (
        _int(env["MASTER_PORT"], "MASTER_PORT", 1) if env.get("MASTER_PORT", "").strip() else DEFAULT_MASTER_PORT
    )

    given = [g for g in annotations.get(ANN_GPU_IDS, "").split(",") if g.strip()]
    if len(given) > gpus_visible:
        raise LaunchError(
            f"the pod was given {len(given)} GPUs ({ANN_GPU_IDS} {','.join(given)}) but CUDA can use "
            f"{gpus_visible}: the device plugin exposed fewer or CUDA failed to initialise"
        )
    raw_nproc = env.get("NPROC_PER_NODE", "").strip()
    nproc = _int(raw_nproc, "NPROC_PER_NODE", 1) if raw_nproc and raw_nproc != "auto" else max(gpus_visible, 1)

    planned_node = annotations.get(ANN_PLANNED_NODE, "")
    node_name = env.get("NODE_NAME", "")
    if planned_node and node_name and planned_node != node_name:
        warnings.append(f"planned for node {planned_node} but running on {node_name}")
    return LaunchPlan(
        nnodes=nnodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        master_addr=master_addr,
        master_port=master_port,
        rank_source=rank_source,
        planned_node=planned_node,
        topology_path=annotations.get(ANN_TOPOLOGY_PATH, ""),
        warnings=tuple(warnings),
    )


def visible_gpus(env: Mapping[str, str]) -> int:
    """GPUs CUDA can use in this container (torch initialises CUDA, within CUDA_VISIBLE_DEVICES).

    CUDA_VISIBLE_DEVICES only says which GPUs may be used, not that CUDA works: it is trusted
    alone only when it names none ("" or "-1"), which spares importing torch on CPU runs.
    """
    if env.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_command(plan: LaunchPlan, train_args: Sequence[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", "torch.distributed.run", *plan.torchrun_args(), "-m", TRAIN_MODULE, *train_args]


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    train_args: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, train_args = args_in[:cut], args_in[cut + 1 :]
    ap = argparse.ArgumentParser(
        prog="python -m workloads.training.launch",
        description="exec torchrun for this pod's place in the gang; arguments after -- go to the trainer",
    )
    ap.add_argument(
        "--annotations", type=Path, default=Path(os.environ.get("GPUSCHED_PODINFO_ANNOTATIONS", ANNOTATIONS_FILE))
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan and command as JSON, start nothing")
    args = ap.parse_args(args_in)

    env = dict(os.environ)
    try:
        plan = plan_launch(env, read_annotations(args.annotations), visible_gpus(env))
    except LaunchError as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return 2
    for warning in plan.warnings:
        print(f"launch: warning: {warning}", file=sys.stderr)
    command = build_command(plan, train_args)
    if args.dry_run:
        print(json.dumps({"plan": asdict(plan), "command": command, "env": plan.extra_env()}, indent=2))
        return 0
    print(
        f"launch: node {plan.node_rank}/{plan.nnodes} ({plan.rank_source}) x {plan.nproc_per_node} "
        f"via {plan.master_addr}:{plan.master_port}",
        file=sys.stderr,
        flush=True,
    )
    os.execvpe(command[0], command, {**env, **plan.extra_env()})
    return 0  # os.execvpe does not return


if __name__ == "__main__":
    sys.exit(main())
