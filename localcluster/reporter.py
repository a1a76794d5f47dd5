"""GPUNodeReports for KWOK's fake nodes, kept fresh while the local cluster runs.

On a real node the gpusched agent writes its node's GPUNodeReport from NVML and the kubelet.
A fake node has neither, so this process writes, for every node of the scenario file, the report
an agent on such a machine would write (:func:`localcluster.kwok.report_objects`): GPUs, model,
memory, CUDA, interconnect and caches from the node type, and ``freeGpus`` from the pods bound
to the node. Like the agent it writes at once when that changes and otherwise every
``--heartbeat`` seconds, so reports never go stale while the cluster is up.

    python -m localcluster.reporter --kubeconfig K --scenario S [--interval 2] [--heartbeat 30]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from kubernetes.client import ApiClient

from localcluster import k8s
from localcluster.kwok import load_scenario, report_objects, scenario_nodes

if TYPE_CHECKING:
    from scheduler.core.types import NodeState

log = logging.getLogger("localcluster.reporter")

REPORTS = "/apis/gpusched.io/v1alpha1/gpunodereports"
FIELD_MANAGER = "gpusched-localcluster-reporter"


def publish(api: ApiClient, nodes: Sequence[NodeState]) -> list[dict[str, Any]]:
    """Write every node's report once, from the pods the API shows now; return the reports."""
    pods = k8s.request(api, "GET", "/api/v1/pods")["items"]
    reports = report_objects(nodes, pods)
    for report in reports:
        write(api, report)
    return reports


def write(api: ApiClient, report: Mapping[str, Any]) -> None:
    k8s.request(
        api,
        "PATCH",
        f"{REPORTS}/{report['metadata']['name']}",
        report,
        query={"fieldManager": FIELD_MANAGER, "force": "true"},
        content_type=k8s.APPLY_PATCH,
    )


def _material(report: Mapping[str, Any]) -> Any:
    spec = {k: v for k, v in report["spec"].items() if k != "reportTime"}
    return repr(sorted(spec.items()))


def run(
    api: ApiClient,
    nodes: Sequence[NodeState],
    *,
    interval: float,
    heartbeat: float,
    stop: threading.Event,
) -> None:
    """Check the pods every ``interval`` seconds; write a node's report when its content changed,
    or ``heartbeat`` seconds after its last write."""
    written: dict[str, tuple[Any, float]] = {}
    while not stop.is_set():
        try:
            pods = k8s.request(api, "GET", "/api/v1/pods")["items"]
            now = time.monotonic()
            for report in report_objects(nodes, pods):
                name = report["metadata"]["name"]
                material = _material(report)
                last = written.get(name)
                if last is None or last[0] != material or now - last[1] >= heartbeat:
                    write(api, report)
                    written[name] = (material, now)
        except Exception:  # the API server may be restarting; try again next round
            log.exception("writing reports failed")
        stop.wait(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--scenario", type=Path, required=True, help="scenario file with nodeTypes and nodes")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between looks at the pods (2)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between writes of a same report (30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nodes = scenario_nodes(load_scenario(args.scenario))
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("reporting for %d nodes of %s", len(nodes), args.scenario)
    with k8s.api_client(args.kubeconfig) as api:
        run(api, nodes, interval=args.interval, heartbeat=args.heartbeat, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
