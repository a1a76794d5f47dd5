"""``gpusched-cluster``: run the local control plane by hand.

``up [--scenario FILE] [--gpusched] [--extender-url URL] [--detach]`` prints the kubeconfig path
and a ``kubectl`` line to paste; ``status`` shows each component; ``kubeconfig`` prints the
kubeconfig path; ``down`` stops what ``up --detach`` started.

With ``--scenario`` the cluster runs pods: kube-controller-manager and KWOK start, the scenario's
nodes (``nodeTypes``/``nodes`` of ``scheduler/core/scenario.py``) become fake Ready nodes with
``nvidia.com/gpu`` capacity, Job pods finish after ``--job-seconds``, and a reporter keeps each
node's GPUNodeReport fresh (:mod:`localcluster.reporter`). ``--gpusched`` starts the gpusched
extender against the cluster and wires kube-scheduler to it, with a ``gpusched`` profile beside
``default-scheduler`` (extenders apply to every profile, so both profiles' pods reach gpusched).
The workdir defaults to ``$GPUSCHED_CLUSTER_WORKDIR`` when set.
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
from kubernetes.client.exceptions import ApiException

from localcluster import kwok
from localcluster.build import BuildError
from localcluster.cluster import REPORTER, ClusterError, LocalCluster, binary, free_port, http_ok
from localcluster.pki import PkiError
from localcluster.process import tail, terminate_group

STATE_FILE = "state.json"
WORKDIR_ENV = "GPUSCHED_CLUSTER_WORKDIR"
CRDS = Path(__file__).resolve().parents[1] / "manifests" / "crds"
EXTENDER = "gpusched-extender"
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
    "kube-controller-manager-certs",
    "kube-controller-manager.kubeconfig",
    "kube-controller-manager.log",
    "kwok.kubeconfig",
    "kwok.yaml",
    "kwok.log",
    f"{REPORTER}.log",
    f"{EXTENDER}.log",
    STATE_FILE,
)


def default_workdir() -> Path:
    override = os.environ.get(WORKDIR_ENV)
    if override:
        return Path(override).expanduser()
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
    if args.gpusched and args.extender_url:
        return _fail("--gpusched starts its own extender; leave out --extender-url")
    scenario: dict[str, Any] | None = None
    if args.scenario is not None:
        try:
            scenario = kwok.load_scenario(args.scenario)
            kwok.scenario_nodes(scenario)  # a mistake in the file stops us before anything starts
        except (OSError, ValueError) as exc:
            return _fail(f"scenario {args.scenario}: {exc}")
    names = args.scheduler_name or (["default-scheduler", "gpusched"] if args.gpusched else ["default-scheduler"])
    cluster = LocalCluster(
        workdir,
        extender_url=args.extender_url,
        extender_config=extender_config,
        scheduler_name=names,
        die_with_parent=not args.detach,
    )
    try:
        kubectl = binary("kubectl")
        cluster.start()
        if scenario is not None or args.gpusched:
            cluster.apply_crds(_crds())
        if scenario is not None:
            cluster.start_kwok(job_seconds=args.job_seconds)
            cluster.create_scenario(scenario)
            cluster.start_node_reports(args.scenario)
        if args.gpusched:
            cluster.extender_url = _start_extender(cluster)
        if not args.no_scheduler:
            cluster.start_scheduler()
    except (ClusterError, BuildError, PkiError, OSError, ApiException, TimeoutError) as exc:
        cluster.stop()
        return _fail(str(exc))
    cluster.write_state(workdir / STATE_FILE)
    print(cluster.kubeconfig_path)
    print(f"KUBECONFIG={cluster.kubeconfig_path} {kubectl} get nodes", flush=True)
    print(f"API server {cluster.api_url}; logs in {workdir}", file=sys.stderr)
    if args.detach:
        cluster.detach()
        return 0
    return _run_foreground(cluster, workdir)


def _crds() -> Path:
    if not CRDS.is_dir():
        raise ClusterError(f"no CRDs at {CRDS}: run gpusched-cluster from a checkout (pip install -e .)")
    return CRDS


def _start_extender(cluster: LocalCluster) -> str:
    """gpusched's extender against the cluster, on a free loopback port; returns its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cluster.start_process(
        EXTENDER,
        [
            sys.executable,
            "-m",
            "scheduler.extender.cli",
            f"--kubeconfig={cluster.kubeconfig_path}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        ready_url=f"{url}/readyz",
    )
    return url


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
    # Newest first (the state lists them oldest first, the scheduler last), so no component
    # sees its backend vanish under it.
    for name, pid in reversed(list(state.get("pids", {}).items())):
        if _pid_alive(pid):
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


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    state = _read_state(args.workdir)
    if state is None:
        return _fail(f"no cluster state in {args.workdir}; run 'gpusched-cluster up --detach' first")
    print(state["kubeconfig"])
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpusched-cluster",
        description="Local etcd + kube-apiserver + kube-scheduler; with --scenario, KWOK nodes that run pods.",
    )
    parser.add_argument(
        "--workdir", type=Path, default=default_workdir(), help="data, logs and state (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build if needed, start, print the kubeconfig path")
    up.add_argument("--scenario", type=Path, help="scenario file: fake GPU nodes run by KWOK (its pods start running)")
    up.add_argument(
        "--job-seconds",
        type=_non_negative,
        default=kwok.DEFAULT_JOB_SECONDS,
        help="seconds a Job's pod runs before it completes (default: %(default)s; "
        f"a pod's {kwok.COMPLETE_DELAY_ANNOTATION} annotation, e.g. 45s, overrides it)",
    )
    up.add_argument("--gpusched", action="store_true", help="start the gpusched extender and wire it in")
    up.add_argument("--extender-url", help="wire gpusched at this URL into kube-scheduler")
    up.add_argument("--extender-config", help="JSON object merged over the extender defaults")
    up.add_argument("--scheduler-name", action="append", help="profile name (repeatable)")
    up.add_argument("--no-scheduler", action="store_true", help="start only etcd and kube-apiserver")
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop a cluster started with 'up --detach'").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show each component and the kubeconfig path").set_defaults(func=cmd_status)
    sub.add_parser("kubeconfig", help="print the kubeconfig path of the running cluster").set_defaults(
        func=cmd_kubeconfig
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
