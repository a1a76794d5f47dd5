"""The extender's state at scale: relist time and resident memory, against an event's cost.

A synthetic cluster of `--nodes` GPU nodes with their GPUNodeReports and `--pods` pods (bound
GPU pods on every node, the rest CPU-only pods, as a real cluster mixes them) is fed to a
ClusterState the way the informers feed it: raw JSON list bodies decoded with orjson, then the
state's relist handlers, then the first snapshot. Each figure is compared with one measured in
the same run: the relist against the incremental path (one pod bound, one report heartbeat, one
changed report), and resident memory against the process before the state was built.

    python benchmarks/state_scale.py [--nodes 5000] [--pods 100000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from extender_latency import node_object, pod_object, report_object

from scheduler.plugins import registry
from scheduler.state.store import ClusterState


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cluster_bodies(nodes: int, pods: int) -> tuple[bytes, bytes, bytes]:
    now = time.time()
    node_list = {"items": [node_object(i) for i in range(nodes)]}
    report_list = {"items": [report_object(i, now) for i in range(nodes)]}
    items = []
    for n in range(pods):
        node = f"node-{n % nodes:05d}"
        if n < nodes * 4:  # four one-GPU pods per node, on GPUs 0..3
            items.append(pod_object(f"gpu-{n}", 1, node, (n // nodes,)))
        else:
            cpu_pod = pod_object(f"cpu-{n}", 0, node)
            cpu_pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
            items.append(cpu_pod)
    return orjson.dumps(node_list), orjson.dumps(report_list), orjson.dumps({"items": items})


def timed(work: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    nodes_body, reports_body, pods_body = cluster_bodies(args.nodes, args.pods)
    gc.collect()
    before = rss_mib()
    state = ClusterState(registry.config_from(None))

    def relist() -> None:
        state.replace_nodes(orjson.loads(nodes_body)["items"])
        state.replace_reports(orjson.loads(reports_body)["items"])
        state.replace_pods(orjson.loads(pods_body)["items"])
        state.snapshot()

    started = time.perf_counter()
    relist()
    first = time.perf_counter() - started
    again = timed(relist, 2)
    gc.collect()
    after = rss_mib()

    bound = [pod_object(f"bind-{k}", 1, f"node-{k % args.nodes:05d}", (7,)) for k in range(200)]
    heartbeat = orjson.loads(reports_body)["items"][1]
    changed = orjson.loads(reports_body)["items"][2]
    counter = iter(range(10**9))

    def bind_one() -> None:
        state.upsert_pod(bound[next(counter) % len(bound)])
        state.snapshot()

    def heartbeat_one() -> None:
        heartbeat["spec"]["reportTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state.upsert_report(heartbeat)
        state.snapshot()

    def change_one() -> None:
        gpus = changed["spec"]["gpus"]
        gpus[0]["healthy"] = not gpus[0]["healthy"]
        state.upsert_report(changed)
        state.snapshot()

    out = {
        "nodes": args.nodes,
        "pods": args.pods,
        "json_mb": round((len(nodes_body) + len(reports_body) + len(pods_body)) / 1e6, 1),
        "relist_first_s": round(first, 2),
        "relist_s": round(again, 2),
        "rss_before_mib": round(before, 1),
        "rss_mib": round(after, 1),
        "state_mib": round(after - before, 1),
        "gpu_pods_held": len(state.pods),
        "pod_bind_ms": round(1000 * timed(bind_one, 200), 3),
        "report_heartbeat_ms": round(1000 * timed(heartbeat_one, 200), 3),
        "report_change_ms": round(1000 * timed(change_one, 50), 3),
    }
    out["relist_x_bind"] = round(1000 * out["relist_s"] / max(out["pod_bind_ms"], 1e-6))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    size = f"{out['json_mb']} MB of list JSON"
    print(f"{args.nodes} nodes, {args.pods} pods ({size}), {out['gpu_pods_held']} GPU pods held")
    print(f"relist (decode + state + snapshot): first {out['relist_first_s']} s, again {out['relist_s']} s")
    print(f"resident memory: {out['rss_mib']:.0f} MiB ({out['state_mib']:.0f} MiB for the state)")
    print(
        f"incremental: pod bound {out['pod_bind_ms']} ms, report heartbeat {out['report_heartbeat_ms']} ms, "
        f"changed report {out['report_change_ms']} ms (a relist is {out['relist_x_bind']}x a bind)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
