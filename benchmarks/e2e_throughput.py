"""kube-scheduler's binding throughput with and without gpusched, on the real control plane.

The project's local control plane (etcd, kube-apiserver, kube-scheduler built by localcluster/)
gets `--nodes` Ready nodes of 8 GPUs, each with a GPUNodeReport that is published again every
30 s during the whole run (as the agents do: `--nodes / 30` writes per second). `--pods` one-GPU
pods are created while kube-scheduler is stopped; then:

1. baseline: kube-scheduler alone starts, timed until every pod is bound; pods deleted;
2. gpusched: the same pods again, kube-scheduler with the gpusched extender (filter, prioritize,
   bind) started, timed the same way.

Both phases are checked from the API: no node holds more GPU pods than it has GPUs, and (with
gpusched) no GPU id is given twice on a node. Prints a table, or JSON with `--json`
(`baseline_pods_per_s`, `gpusched_pods_per_s`, `ratio`, and the extender's resident memory).

    python benchmarks/e2e_throughput.py [--nodes 1000] [--pods 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes.client import ApiClient  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from localcluster import k8s  # noqa: E402
from localcluster.cluster import LocalCluster, free_port  # noqa: E402

NAMESPACE = "bench"
GPUS_PER_NODE = 8
REPORTS = "/apis/gpusched.io/v1alpha1/gpunodereports"
MODELS = (("NVIDIA H100 80GB HBM3", 80), ("NVIDIA A100-SXM4-40GB", 40))
GiB = 2**30


def node_name(i: int) -> str:
    return f"gpu-{i:05d}"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(i: int) -> dict[str, Any]:
    model, gib = MODELS[i % len(MODELS)]
    name = node_name(i)
    return {
        "apiVersion": "gpusched.io/v1alpha1",
        "kind": "GPUNodeReport",
        "metadata": {"name": name},
        "spec": {
            "nodeName": name,
            "reportTime": stamp(),
            "cudaDriverVersion": "12.4",
            "driverVersion": "550.54.15",
            "gpus": [
                {"index": g, "uuid": f"GPU-{i}-{g}", "model": model, "memoryTotalBytes": gib * GiB, "healthy": True}
                for g in range(GPUS_PER_NODE)
            ],
        },
    }


def pod(n: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{n:05d}", "namespace": NAMESPACE},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {
                        "limits": {"nvidia.com/gpu": "1"},
                        "requests": {"cpu": "100m", "memory": "128Mi", "nvidia.com/gpu": "1"},
                    },
                }
            ],
        },
    }


def parallel(fn: Any, items: list[Any], workers: int = 16) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, items):
            pass


class Heartbeats(threading.Thread):
    """Every report written again once per `period` seconds, spread evenly, until stopped."""

    def __init__(self, api: ApiClient, nodes: int, period: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.api, self.nodes, self.period = api, nodes, period
        self.stopping = threading.Event()
        self.writes = 0

    def run(self) -> None:
        interval = self.period / self.nodes
        next_at = time.monotonic()
        i = 0
        while not self.stopping.is_set():
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)
            body = {"spec": {"reportTime": stamp()}}
            try:
                k8s.request(self.api, "PATCH", f"{REPORTS}/{node_name(i)}", body, content_type=k8s.MERGE_PATCH)
                self.writes += 1
            except Exception as exc:  # a missed heartbeat is what a real agent may do too
                print(f"heartbeat {node_name(i)}: {exc}", file=sys.stderr)
            i = (i + 1) % self.nodes


class Extender:
    def __init__(self, cluster: LocalCluster, workdir: Path, profile: str = "") -> None:
        self.cluster, self.port, self.profile = cluster, free_port(), profile
        self.log = workdir / "extender.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0) -> float:
        started = time.monotonic()
        # --profile: py-spy (pip install py-spy) samples the extender for the whole run.
        prefix = ["py-spy", "record", "--format", "speedscope", "-o", self.profile, "--"] if self.profile else []
        self.proc = subprocess.Popen(
            [
                *prefix,
                *(sys.executable, "-m", "scheduler.extender.cli"),
                *("--kubeconfig", str(self.cluster.kubeconfig_path), "--host", "127.0.0.1"),
                *("--port", str(self.port), "--log-level", "warning"),
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"extender exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("extender not ready")

    def verb_ms(self) -> dict[str, float]:
        """Mean seconds per verb, from the extender's own request histogram, in milliseconds."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for line in text.splitlines():
            for suffix, into in (("_sum", sums), ("_count", counts)):
                prefix = f'gpusched_extender_request_duration_seconds{suffix}{{verb="'
                if line.startswith(prefix):
                    verb = line[len(prefix) :].split('"', 1)[0]
                    into[verb] = float(line.rsplit(" ", 1)[1])
        return {verb: round(1000 * sums[verb] / counts[verb], 2) for verb in sums if counts.get(verb)}

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT if self.profile else signal.SIGTERM)
            self.proc.wait(120)


def unbound(api: ApiClient) -> int:
    body = k8s.request(api, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query={"fieldSelector": "spec.nodeName="})
    return len(body["items"])


def timed_phase(cluster: LocalCluster, api: ApiClient, pods: int, extender_url: str | None, timeout: float) -> float:
    parallel(lambda n: k8s.request(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod(n)), list(range(pods)))
    cluster.start_scheduler(extender_url, scheduler_config={"podInitialBackoffSeconds": 1, "podMaxBackoffSeconds": 2})
    started = time.monotonic()
    while unbound(api):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{unbound(api)} pods still unbound after {timeout:.0f}s")
        time.sleep(0.25)
    seconds = time.monotonic() - started
    cluster.stop_scheduler()
    return seconds


def check_placement(api: ApiClient, with_ids: bool) -> dict[str, int]:
    items = k8s.request(api, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    per_node = Counter(p["spec"]["nodeName"] for p in items)
    over = [n for n, c in per_node.items() if c > GPUS_PER_NODE]
    ids: Counter[tuple[str, str]] = Counter()
    missing_ids = 0
    for p in items:
        annotation = (p["metadata"].get("annotations") or {}).get("gpusched.io/gpu-ids")
        if annotation is None:
            missing_ids += 1
            continue
        for gpu in annotation.split(","):
            ids[(p["spec"]["nodeName"], gpu)] += 1
    twice = [k for k, c in ids.items() if c > 1]
    if over or twice or (with_ids and missing_ids):
        raise RuntimeError(f"over-committed nodes {over[:5]}, GPU ids given twice {twice[:5]}, no ids {missing_ids}")
    return {"nodes_used": len(per_node), "max_pods_per_node": max(per_node.values(), default=0)}


def delete_pods(api: ApiClient, timeout: float = 900.0) -> None:
    """Every pod of the namespace deleted (grace 0), one call per pod, in parallel, until none is left.

    One delete-collection of thousands of pods outlasts the API server's request timeout and is
    then cut short, so the pods are deleted one by one instead."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    deadline = time.monotonic() + timeout

    def delete(name: str) -> None:
        try:
            k8s.request(api, "DELETE", f"{path}/{name}", query={"gracePeriodSeconds": "0"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    while names := [p["metadata"]["name"] for p in k8s.request(api, "GET", path)["items"]]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names)} pods left after {timeout:.0f}s")
        parallel(delete, names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per phase")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", default="", help="write a py-spy profile of the extender here")
    args = parser.parse_args()
    if args.pods > args.nodes * GPUS_PER_NODE:
        parser.error("more pods than GPUs")
    out: dict[str, Any] = {"nodes": args.nodes, "pods": args.pods}
    with tempfile.TemporaryDirectory(prefix="gpusched-e2e-throughput-") as tmp, LocalCluster(Path(tmp)) as cluster:
        cluster.apply_crds(REPO / "manifests" / "crds")
        with cluster.api_client() as api:
            k8s.create_namespace(api, NAMESPACE)
            t = time.monotonic()
            parallel(lambda i: k8s.create_gpu_node(api, node_name(i), GPUS_PER_NODE), list(range(args.nodes)))
            parallel(lambda i: k8s.request(api, "POST", REPORTS, report(i)), list(range(args.nodes)))
            out["setup_s"] = round(time.monotonic() - t, 1)
            heartbeats = Heartbeats(api, args.nodes)
            heartbeats.start()
            extender = Extender(cluster, Path(tmp), args.profile)
            try:
                out["extender_start_s"] = round(extender.start(), 1)
                baseline = timed_phase(cluster, api, args.pods, None, args.timeout)
                print(f"kube-scheduler alone: {args.pods} pods bound in {baseline:.1f} s", file=sys.stderr)
                out["baseline"] = check_placement(api, with_ids=False)
                delete_pods(api)
                ours = timed_phase(cluster, api, args.pods, extender.url, args.timeout)
                out["gpusched"] = check_placement(api, with_ids=True)
                out["extender_rss_mib"] = round(extender.rss_mib(), 1)
                out["extender_mean_ms"] = extender.verb_ms()
            finally:
                heartbeats.stopping.set()
                extender.stop()
            out["report_writes"] = heartbeats.writes
    out["baseline_s"] = round(baseline, 1)
    out["gpusched_s"] = round(ours, 1)
    out["baseline_pods_per_s"] = round(args.pods / baseline, 1)
    out["gpusched_pods_per_s"] = round(args.pods / ours, 1)
    out["ratio"] = round(baseline / ours, 2)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.nodes} nodes x {GPUS_PER_NODE} GPUs, {args.pods} one-GPU pods, reports every 30 s")
    print(f"{'mode':<34}{'seconds':>9}{'pods/s':>9}")
    print(f"{'kube-scheduler alone':<34}{out['baseline_s']:>9.1f}{out['baseline_pods_per_s']:>9.1f}")
    print(f"{'kube-scheduler + gpusched':<34}{out['gpusched_s']:>9.1f}{out['gpusched_pods_per_s']:>9.1f}")
    print(f"ratio {out['ratio']:.2f}; extender resident memory {out['extender_rss_mib']:.0f} MiB")
    print("extender's mean answer per verb (ms):", out["extender_mean_ms"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
