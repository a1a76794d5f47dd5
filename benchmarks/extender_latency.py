"""Extender decision latency at cluster scale, against the HTTP floor measured in the same run.

A cluster of `--nodes` GPU nodes (8 GPUs each, three GPU models, about half the nodes partly busy,
images and weights cached on some) is fed to a ClusterState the way the informers feed it (Node
objects, GPUNodeReports, Pods), and the extender app is served by uvicorn on loopback in its own
process. A keep-alive client sends kube-scheduler-shaped calls for `--pods` pods of mixed GPU
counts: filter with the full Pod and every node's name, then prioritize with the names filter
passed. The floor is a bare FastAPI app under the same uvicorn, decoding the same bodies with the
same library (msgspec) and answering every node with a constant; each pod's calls go to both
servers in turn, so both see the same machine.

`--churn N` applies N informer events per second inside the extender's process while it answers:
report heartbeats (most of them, as 5,000 agents every 30 s are 167/s) and pod binds and deletes.

    python benchmarks/extender_latency.py [--nodes 5000] [--pods 500] [--churn 167] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import random
import socket
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
from fastapi import FastAPI, Request, Response

GiB = 2**30
MODELS = (("NVIDIA H100 80GB HBM3", 80), ("NVIDIA A100-SXM4-40GB", 40), ("NVIDIA L4", 24))
IMAGE = "ghcr.io/acme/llm-serve:2.1"
WEIGHTS = "meta-llama/Llama-3.1-8B@5206a32"


# ------------------------------------------------------------------ the cluster
def node_object(i: int) -> dict[str, Any]:
    name = f"node-{i:05d}"
    images = [{"names": [IMAGE], "sizeBytes": 15 * 10**9}] if i % 7 == 0 else []
    return {
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "network.topology.nvidia.com/leaf": f"rack-{i // 16}"},
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "128", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "images": images,
        },
    }


def report_object(i: int, now: float) -> dict[str, Any]:
    from scheduler.core.scenario import interconnect_links

    model, gib = MODELS[i % len(MODELS)]
    wiring = "nvswitch" if i % len(MODELS) != 2 else "pcie"
    return {
        "metadata": {"name": f"node-{i:05d}"},
        "spec": {
            "nodeName": f"node-{i:05d}",
            "reportTime": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cudaDriverVersion": "12.4",
            "driverVersion": "550.54.15",
            "gpus": [
                {"index": g, "uuid": f"GPU-{i}-{g}", "model": model, "memoryTotalBytes": gib * GiB, "healthy": True}
                for g in range(8)
            ],
            "topology": {"matrix": [list(row) for row in interconnect_links(wiring, 8)]},
            "models": [{"id": WEIGHTS, "bytes": 16 * 10**9}] if i % 11 == 0 else [],
        },
    }


def pod_object(name: str, gpus: int, node: str = "", gpu_ids: tuple[int, ...] = (), **extra: Any) -> dict[str, Any]:
    annotations: dict[str, str] = dict(extra.get("annotations", {}))
    if gpu_ids:
        annotations["gpusched.io/gpu-ids"] = ",".join(map(str, gpu_ids))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": f"uid-{name}",
            "resourceVersion": str(zlib.crc32(name.encode())),  # every Pod kube-scheduler sends has one
            "labels": {"app": name.rsplit("-", 1)[0]},
            "annotations": annotations,
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs-" + name.rsplit("-", 1)[0], "controller": True}],
        },
        "spec": {
            "nodeName": node or None,
            "schedulerName": "gpusched",
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "resources": {
                        "limits": {"nvidia.com/gpu": str(gpus)},
                        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": str(gpus)},
                    },
                    "env": [{"name": "MODEL", "value": WEIGHTS}],
                }
            ],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


def running_pods(nodes: int, seed: int) -> list[dict[str, Any]]:
    """About half the nodes partly busy: 1 to 6 of their GPUs held by running pods."""
    rng = random.Random(seed)
    pods = []
    for i in range(0, nodes, 2):
        used = rng.randint(1, 6)
        pods.append(pod_object(f"run-{i}", used, f"node-{i:05d}", tuple(range(used))))
    return pods


def pending_pods(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    out = []
    for n in range(count):
        gpus = rng.choice((1, 1, 1, 2, 4, 8))
        annotations = {}
        if n % 3 == 0:
            annotations["gpusched.io/gpu-memory"] = "40Gi"
        if n % 4 == 0:
            annotations.update({"gpusched.io/model": WEIGHTS, "gpusched.io/workload": "inference"})
        out.append(pod_object(f"web{n % 25}-{n}", gpus, annotations=annotations))
    return out


# -------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_extender(port: int, nodes: int, seed: int, churn: float, ready: Any) -> None:
    import uvicorn

    from scheduler.extender.app import create_app
    from scheduler.extender.binders import OfflineBinder
    from scheduler.extender.service import ExtenderService
    from scheduler.metrics import ExtenderMetrics
    from scheduler.plugins import registry
    from scheduler.state.store import ClusterState

    config = registry.config_from(None)
    state = ClusterState(config)
    now = time.time()
    state.replace_nodes([node_object(i) for i in range(nodes)])
    state.replace_reports([report_object(i, now) for i in range(nodes)])
    state.replace_pods(running_pods(nodes, seed))
    service = ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics())
    service.filter(_warm_up_args(nodes))  # the first decision builds the snapshot (and freezes it)
    if churn > 0:
        threading.Thread(target=apply_churn, args=(state, nodes, churn, seed), daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=_set_soon, args=(ready,), daemon=True).start()
    server.run()


def _set_soon(ready: Any) -> None:
    time.sleep(0.5)  # uvicorn binds its socket within this; wait_ready then checks it accepts
    ready.set()


def _warm_up_args(nodes: int) -> Any:
    from scheduler.extender import wire

    body = {"Pod": pending_pods(1, 0)[0], "Nodes": None, "NodeNames": [f"node-{i:05d}" for i in range(nodes)]}
    return msgspec.json.decode(msgspec.json.encode(body), type=wire.ExtenderArgs)


def apply_churn(state: Any, nodes: int, per_second: float, seed: int) -> None:
    """Heartbeats (nine in ten events) and binds/deletes of one-GPU pods, at an even rate."""
    rng = random.Random(seed + 2)
    reports = {i: report_object(i, time.time()) for i in range(nodes)}
    bound: list[dict[str, Any]] = []
    interval = 1.0 / per_second
    next_at = time.perf_counter()
    n = 0
    while True:
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        n += 1
        if n % 10:
            i = rng.randrange(nodes)
            report = reports[i]
            report["spec"]["reportTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            state.upsert_report(report)
        elif len(bound) < 200 and rng.random() < 0.6:
            i = rng.randrange(1, nodes, 2)  # the idle half: GPU 7 is always free there
            pod = pod_object(f"churn-{n}", 1, f"node-{i:05d}", (7,))
            state.upsert_pod(pod)
            bound.append(pod)
        elif bound:
            state.delete_pod(bound.pop(rng.randrange(len(bound))))


def serve_floor(port: int, ready: Any) -> None:
    import uvicorn

    from scheduler.extender import wire

    app = FastAPI(docs_url=None, redoc_url=None)

    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        args = msgspec.json.decode(await request.body(), type=wire.ExtenderArgs)
        result = wire.ExtenderFilterResult(node_names=list(args.node_names or []), failed_nodes={})
        return Response(msgspec.json.encode(result), media_type="application/json")

    @app.post("/prioritize")
    async def prioritize(request: Request) -> Response:
        args = msgspec.json.decode(await request.body(), type=wire.ExtenderArgs)
        result = [wire.HostPriority(host=name, score=5) for name in args.node_names or []]
        return Response(msgspec.json.encode(result), media_type="application/json")

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=_set_soon, args=(ready,), daemon=True).start()
    server.run()


# --------------------------------------------------------------------- client
class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[float, Any]:
        started = time.perf_counter()
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:300]!r}")
        return elapsed, msgspec.json.decode(data)


def wait_ready(port: int, ready: Any, timeout: float = 600) -> None:
    if not ready.wait(timeout):
        raise RuntimeError(f"server on {port} did not start")
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} does not accept connections")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(1000 * statistics.median(ordered), 3), "p99_ms": round(1000 * p99, 3)}


def measure(nodes: int, pods: int, churn: float, seed: int, warmup: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    ours_port, floor_port = free_port(), free_port()
    ours_ready, floor_ready = ctx.Event(), ctx.Event()
    ours = ctx.Process(target=serve_extender, args=(ours_port, nodes, seed, churn, ours_ready), daemon=True)
    floor = ctx.Process(target=serve_floor, args=(floor_port, floor_ready), daemon=True)
    ours.start()
    floor.start()
    try:
        wait_ready(ours_port, ours_ready)
        wait_ready(floor_port, floor_ready)
        names = [f"node-{i:05d}" for i in range(nodes)]
        client_ours, client_floor = Client(ours_port), Client(floor_port)
        samples: dict[str, list[float]] = {"filter": [], "prioritize": [], "floor_filter": [], "floor_prioritize": []}
        passed_total = 0
        for n, pod in enumerate(pending_pods(pods + warmup, seed)):
            filter_body = msgspec.json.encode({"Pod": pod, "Nodes": None, "NodeNames": names})
            t_filter, answer = client_ours.post("/filter", filter_body)
            if answer.get("Error"):
                raise RuntimeError(f"filter refused {pod['metadata']['name']}: {answer['Error']}")
            passed = answer.get("NodeNames") or []
            prio_body = msgspec.json.encode({"Pod": pod, "Nodes": None, "NodeNames": passed})
            t_prio, _ = client_ours.post("/prioritize", prio_body)
            t_floor_filter, _ = client_floor.post("/filter", filter_body)
            t_floor_prio, _ = client_floor.post("/prioritize", prio_body)
            if n >= warmup:
                passed_total += len(passed)
                samples["filter"].append(t_filter)
                samples["prioritize"].append(t_prio)
                samples["floor_filter"].append(t_floor_filter)
                samples["floor_prioritize"].append(t_floor_prio)
    finally:
        ours.terminate()
        floor.terminate()
        ours.join(10)
        floor.join(10)
    out: dict[str, Any] = {"nodes": nodes, "pods": pods, "churn_per_s": churn}
    out["mean_nodes_passed"] = round(passed_total / max(pods, 1), 1)
    for verb, values in samples.items():
        stats = percentiles(values)
        out[f"{verb}_p50_ms"] = stats["p50_ms"]
        out[f"{verb}_p99_ms"] = stats["p99_ms"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--churn", type=float, default=0.0, help="informer events per second during the run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.nodes, args.pods, 0.0, args.seed, args.warmup)
    if args.churn > 0:
        churned = measure(args.nodes, args.pods, args.churn, args.seed, args.warmup)
        for verb in ("filter", "prioritize"):
            for q in ("p50", "p99"):
                result[f"churn_{verb}_{q}_ms"] = churned[f"{verb}_{q}_ms"]
                result[f"churn_floor_{verb}_{q}_ms"] = churned[f"floor_{verb}_{q}_ms"]
        result["churn_per_s"] = args.churn
    for verb in ("filter", "prioritize"):
        result[f"{verb}_x_floor_p50"] = round(result[f"{verb}_p50_ms"] / result[f"floor_{verb}_p50_ms"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    show: Callable[[str], str] = lambda key: f"{result[key]:>9.2f}"  # noqa: E731
    print(f"{args.nodes} nodes, {args.pods} pods, {result['mean_nodes_passed']} nodes passed filter on average")
    print(f"{'verb':<12}{'p50 ms':>9}{'p99 ms':>9} | {'floor p50':>9}{'floor p99':>10} | {'x floor p50':>11}")
    for verb in ("filter", "prioritize"):
        print(
            f"{verb:<12}{show(f'{verb}_p50_ms')}{show(f'{verb}_p99_ms')} | {show(f'floor_{verb}_p50_ms')}"
            f"{result[f'floor_{verb}_p99_ms']:>10.2f} | {result[f'{verb}_x_floor_p50']:>11.2f}"
        )
    if args.churn > 0:
        print(f"with {args.churn:g} informer events/s:")
        for verb in ("filter", "prioritize"):
            print(
                f"{verb:<12}{show(f'churn_{verb}_p50_ms')}{show(f'churn_{verb}_p99_ms')} | "
                f"{show(f'churn_floor_{verb}_p50_ms')}{result[f'churn_floor_{verb}_p99_ms']:>10.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
