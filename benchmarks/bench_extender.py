"""Extender benchmarks: decision latency by cluster size, and informer relist cost.

Each figure is compared with a baseline measured in the same run:
- decisions: filter+prioritize through ExtenderService (vectorised core) against a plain
  per-node Python loop doing only the GPU-count check, the cheapest per-node alternative;
- relist: 5,000 pods decoded into the kubernetes client's model objects against orjson plus
  gpusched's own field extraction (what the informers do).

    python benchmarks/bench_extender.py [--json] [--sizes 100,1000,5000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from scheduler.core.podspec import parse_pod
from scheduler.core.scenario import interconnect_links, pod_object
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import GpuInfo, NodeState
from scheduler.extender import wire
from scheduler.extender.binders import OfflineBinder
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.store import ClusterState

GiB = 2**30


def cluster(n: int) -> tuple[ExtenderService, list[str]]:
    config = registry.config_from(None)
    state = ClusterState(config)
    links = interconnect_links("nvswitch", 8)
    nodes = [
        NodeState(
            name=f"node-{i:05d}",
            labels={"network.topology.nvidia.com/leaf": f"rack-{i // 16}"},
            gpu_count=8,
            cpu_milli=128_000,
            memory=1024 * GiB,
            gpus=tuple(GpuInfo(g, "H100-80GB", 80 * GiB) for g in range(8)),
            links=links,
            cuda=(12, 4),
            images={"ghcr.io/acme/llm:1": 15 * GiB} if i % 7 == 0 else {},
            report_age_s=1.0,
        )
        for i in range(n)
    ]
    running = [
        parse_pod(
            pod_object(
                {"name": f"run-{i}", "gpus": 1 + i % 4, "node": f"node-{i % n:05d}", "gpuIds": list(range(1 + i % 4))}
            )
        )
        for i in range(n // 2)
    ]
    state.load_static(nodes, running)
    return ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics()), [x.name for x in nodes]


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p95_ms": samples[int(0.95 * (len(samples) - 1))]}


def bench_decisions(sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        service, names = cluster(n)
        pod = pod_object(
            {
                "name": "bench",
                "gpus": 4,
                "image": "ghcr.io/acme/llm:1",
                "annotations": {"gpusched.io/gpu-memory": "40Gi"},
            }
        )
        args = wire.ExtenderArgs(pod=pod, node_names=names)

        def decide(service: ExtenderService = service, args: wire.ExtenderArgs = args) -> None:
            service.filter(args)
            service.prioritize(args)

        snap = service.state.snapshot()

        def naive(snap: ClusterSnapshot = snap) -> None:
            # Baseline: one Python pass over the nodes checking only free GPU counts.
            nodes = snap.nodes
            free = snap.gpu_free_count()
            [node.name for i, node in enumerate(nodes) if free[i] >= 4 and node.ready]

        ours, base = timed(decide, repeat), timed(naive, repeat)
        out.append({"nodes": n, "filter_prioritize": ours, "baseline_count_loop": base})
    return out


def bench_relist(pods: int) -> dict[str, Any]:
    from kubernetes import client

    items = [
        pod_object(
            {
                "name": f"p-{i}",
                "gpus": i % 3,
                "node": f"n-{i % 500}",
                "annotations": {"gpusched.io/model": "org/m@main"},
            }
        )
        for i in range(pods)
    ]
    body = orjson.dumps({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
    api = client.ApiClient()

    class Response:
        data = body

        def getheader(self, name: str, default: str | None = None) -> str | None:
            return default

    def models() -> None:
        api.deserialize(Response(), "V1PodList")  # type: ignore[arg-type, call-arg]

    def raw() -> None:
        [parse_pod(i) for i in orjson.loads(body)["items"]]

    try:
        base = timed(models, 3)
    except TypeError:  # newer clients take the raw body and content type instead
        base = timed(lambda: api.deserialize(body.decode(), "V1PodList", "application/json"), 3)
    return {"pods": pods, "json_bytes": len(body), "orjson_extract": timed(raw, 3), "client_models": base}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--relist-pods", type=int, default=5000)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "decisions": bench_decisions([int(s) for s in args.sizes.split(",")], args.repeat),
        "relist": bench_relist(args.relist_pods),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("filter + prioritize, 4-GPU pod with a memory floor (ms)")
    print(f"{'nodes':>7} {'p50':>8} {'p95':>8} | {'baseline loop p50':>18}")
    for row in result["decisions"]:
        ours, base = row["filter_prioritize"], row["baseline_count_loop"]
        print(f"{row['nodes']:>7} {ours['p50_ms']:>8.2f} {ours['p95_ms']:>8.2f} | {base['p50_ms']:>18.2f}")
    r = result["relist"]
    print(f"\nrelist of {r['pods']} pods ({r['json_bytes'] / 1e6:.1f} MB JSON), p50 ms:")
    print(f"  orjson + field extraction: {r['orjson_extract']['p50_ms']:.0f}")
    print(f"  kubernetes client models:  {r['client_models']['p50_ms']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
