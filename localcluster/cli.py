"""``gpusched-cluster``: run the local control plane by hand.

``up [--extender-url URL] [--detach]`` prints the kubeconfig path; ``status`` shows each
component; ``down`` stops what ``up --detach`` started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from localcluster.build import BuildError
from localcluster.cluster import ClusterError, LocalCluster, http_ok
from localcluster.pki import PkiError
from localcluster.process import tail, terminate_group

STATE_FILE = "state.json"
# Paths a previous run left in the workdir; anything else there is not ours and is kept.
_OWN_ENTRIES = (
    "etcd-data",
    "pki",
    "kube-scheduler-certs",
    "tokens.csv",
    "admin.kubeconfig",
    "kube-scheduler.kubeconfig",
    "kube-scheduler.yaml",
    "etcd.log",
    "kube-apiserver.log",
    "kube-scheduler.log",
    STATE_FILE,
)


def default_workdir() -> Path:
    return Path.home() / ".cache" / "gpusched" / "cluster-state" / "default"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((workdir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return state


def _live_pids(state: dict[str, Any]) -> dict[str, int]:
    return {name: pid for name, pid in state.get("pids", {}).items() if _pid_alive(pid)}


def _fail(message: str) -> int:
    print(f"gpusched-cluster: error: {message}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir
    state = _read_state(workdir)
    if state and _live_pids(state):
        return _fail(f"a cluster is already running in {workdir}; run 'gpusched-cluster down' first")
    workdir.mkdir(parents=True, exist_ok=True)
    for entry in _OWN_ENTRIES:
        path = workdir / entry
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    try:
        extender_config = json.loads(args.extender_config) if args.extender_config else None
    except json.JSONDecodeError as exc:
        return _fail(f"--extender-config is not valid JSON: {exc}")
    cluster = LocalCluster(
        workdir,
        extender_url=args.extender_url,
        extender_config=extender_config,
        scheduler_name=args.scheduler_name or ["default-scheduler"],
        die_with_parent=not args.detach,
    )
    try:
        cluster.start(scheduler=not args.no_scheduler)
    except (ClusterError, BuildError, PkiError) as exc:
        return _fail(str(exc))
    cluster.write_state(workdir / STATE_FILE)
    print(cluster.kubeconfig_path, flush=True)
    print(f"API server {cluster.api_url}; logs in {workdir}", file=sys.stderr)
    if args.detach:
        cluster.detach()
        return 0
    return _run_foreground(cluster, workdir)


def _run_foreground(cluster: LocalCluster, workdir: Path) -> int:
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print("running; press Ctrl-C to stop", file=sys.stderr, flush=True)
    code = 0
    while not stopping:
        dead = [proc for proc in cluster.processes.values() if not proc.alive()]
        if dead:
            proc = dead[0]
            print(
                f"{proc.name} exited unexpectedly; end of {proc.log_path}:\n{tail(proc.log_path)}",
                file=sys.stderr,
            )
            code = 1
            break
        time.sleep(0.5)
    cluster.stop()
    (workdir / STATE_FILE).unlink(missing_ok=True)
    print("stopped", file=sys.stderr)
    return code


def cmd_down(args: argparse.Namespace) -> int:
    state = _read_state(args.workdir)
    if state is None:
        print(f"no cluster state in {args.workdir}; nothing to stop", file=sys.stderr)
        return 0
    # Newest first, so the scheduler and apiserver never see their backend vanish under them.
    for name in ("kube-scheduler", "kube-apiserver", "etcd"):
        pid = state.get("pids", {}).get(name)
        if pid is not None and _pid_alive(pid):
            terminate_group(pid)
            print(f"stopped {name} (pid {pid})", file=sys.stderr)
    (args.workdir / STATE_FILE).unlink(missing_ok=True)
    return 0


def _apiserver_ready(state: dict[str, Any]) -> bool:
    kubeconfig = yaml.safe_load(Path(state["kubeconfig"]).read_text())
    ca = kubeconfig["clusters"][0]["cluster"]["certificate-authority"]
    token = kubeconfig["users"][0]["user"]["token"]
    context = ssl.create_default_context(cafile=ca)
    return http_ok(f"{state['api_url']}/readyz", context=context, token=token)


def cmd_status(args: argparse.Namespace) -> int:
    state = _read_state(args.workdir)
    if state is None:
        print(f"not running (no state in {args.workdir})")
        return 1
    live = _live_pids(state)
    healthy = True
    for name, pid in state.get("pids", {}).items():
        up = name in live
        if up and name == "kube-apiserver":
            up = _apiserver_ready(state)
        healthy = healthy and up
        print(f"{name}: {'up' if up else 'down'} (pid {pid})")
    print(f"api: {state['api_url']}")
    print(f"kubeconfig: {state['kubeconfig']}")
    return 0 if healthy else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpusched-cluster", description="Local etcd + kube-apiserver + kube-scheduler."
    )
    parser.add_argument(
        "--workdir", type=Path, default=default_workdir(), help="data, logs and state (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build if needed, start, print the kubeconfig path")
    up.add_argument("--extender-url", help="wire gpusched at this URL into kube-scheduler")
    up.add_argument("--extender-config", help="JSON object merged over the extender defaults")
    up.add_argument("--scheduler-name", action="append", help="profile name (repeatable)")
    up.add_argument("--no-scheduler", action="store_true", help="start only etcd and kube-apiserver")
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop a cluster started with 'up --detach'").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show each component and the kubeconfig path").set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
