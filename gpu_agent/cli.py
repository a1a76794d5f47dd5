"""``gpusched-agent``: the node agent's command line.

    gpusched-agent --once --print --fake-nvml dgx-h100     # one report as JSON, no cluster needed
    gpusched-agent --node-name gpu-17 --metrics-port 9402  # the DaemonSet's loop

``--print`` prints reports instead of writing them to the API. ``--once`` collects (and prints
or writes) one report and exits: 0 on success, 1 when the write failed. Without NVML (no
library, no driver) and without ``--fake-nvml``, the agent says so and exits with status 2.

This module and the NVML path need only the standard library and pynvml; gRPC, the kubernetes
client, huggingface_hub and prometheus_client are imported only when a flag needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from gpu_agent import __version__

log = logging.getLogger("gpu_agent")

EXIT_NO_NVML = 2
EXIT_WRITE_FAILED = 1


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    from gpu_agent.inventory import default_hf_cache

    p = argparse.ArgumentParser(
        prog="gpusched-agent",
        description="Publish this node's GPUs, interconnect and caches as its GPUNodeReport.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="node to report for (default: $NODE_NAME, else the host name)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, else ~/.kube/config)")
    p.add_argument(
        "--heartbeat", type=_positive, default=30.0, help="seconds between renewals of the node's Lease (30)"
    )
    p.add_argument(
        "--lease-duration",
        type=int,
        default=90,
        help="the Lease's leaseDurationSeconds: a node whose Lease is this old is stale (90)",
    )
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "gpusched-system",
        help="namespace of the per-node Leases (default: $POD_NAMESPACE, else gpusched-system)",
    )
    p.add_argument(
        "--refresh",
        type=_positive,
        default=300.0,
        help="least seconds between writes of a report whose only changes are utilisation, memory use, bandwidth "
        "or free disk (300)",
    )
    p.add_argument(
        "--interval", type=_positive, help="seconds between samples of GPUs and pods (default: min(10, heartbeat))"
    )
    p.add_argument("--min-write-interval", type=float, default=5.0, help="least seconds between two writes (5)")
    p.add_argument(
        "--inventory-interval", type=_positive, default=60.0, help="seconds between image and cache scans (60)"
    )
    p.add_argument(
        "--hf-cache",
        type=Path,
        default=default_hf_cache(),
        help="Hugging Face hub cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)",
    )
    p.add_argument("--lora-dir", type=Path, action="append", default=[], help="folder of LoRA adapters (repeatable)")
    p.add_argument("--cri-socket", help="CRI runtime socket for the image list, e.g. /run/containerd/containerd.sock")
    p.add_argument(
        "--host-root",
        type=Path,
        default=Path("/"),
        help="where the host's filesystem is mounted, to measure the runtime's image filesystem (default: /)",
    )
    p.add_argument(
        "--podresources-socket",
        default="/var/lib/kubelet/pod-resources/kubelet.sock",
        help="kubelet PodResources socket (default: %(default)s); pods are left out when it is missing",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address for /metrics (default: %(default)s)")
    p.add_argument(
        "--disk-probe-interval", type=_positive, default=3600.0, help="seconds between disk read measurements (3600)"
    )
    p.add_argument(
        "--disk-probe-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="bytes read per disk measurement, 0 to turn it off (256 MiB)",
    )
    p.add_argument("--pull-bytes-per-second", type=float, help="image pull throughput to report (measured elsewhere)")
    p.add_argument(
        "--download-bytes-per-second", type=float, help="model download throughput to report (measured elsewhere)"
    )
    p.add_argument("--once", action="store_true", help="collect one report, print or write it, and exit")
    p.add_argument("--print", action="store_true", help="print reports as JSON instead of writing them to the API")
    p.add_argument("--fake-nvml", metavar="NAME", help="use the fake NVML with a bundled machine, or a fixture path")
    p.add_argument("--log-level", default=os.environ.get("GPUSCHED_AGENT_LOG_LEVEL", "INFO"))
    return p


def _pod_source(path: str) -> Any:
    if not os.path.exists(path):
        log.info("no kubelet PodResources socket at %s: pods per GPU are left out", path)
        return None
    try:
        from gpu_agent.podresources.client import PodResourcesClient
    except ImportError as exc:
        log.warning("grpcio/protobuf not installed (%s): pods per GPU are left out", exc)
        return None
    return PodResourcesClient(path)


def _image_source(path: str | None) -> Any:
    if not path:
        return None
    try:
        from gpu_agent.cri.client import ImageClient
    except ImportError as exc:
        log.warning("grpcio/protobuf not installed (%s): images are left out", exc)
        return None
    return ImageClient(path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from gpu_agent.agent import Agent, AgentConfig
    from gpu_agent.nvml_reader import NvmlReader, NvmlReadError, NvmlUnavailable
    from gpu_agent.report import dumps

    try:
        if args.fake_nvml:
            from gpu_agent import fake_nvml

            fixture = fake_nvml.activate(args.fake_nvml)
            log.info("fake NVML: machine %s", fixture)
        reader = NvmlReader()
        reader.open()
    except ImportError as exc:
        print(f"gpusched-agent: error: pynvml (nvidia-ml-py) is not installed: {exc}", file=sys.stderr)
        return EXIT_NO_NVML
    except NvmlUnavailable as exc:
        print(f"gpusched-agent: error: {exc}", file=sys.stderr)
        return EXIT_NO_NVML
    except RuntimeError as exc:  # fake NVML: no compiler, unknown machine
        print(f"gpusched-agent: error: {exc}", file=sys.stderr)
        return EXIT_NO_NVML

    interval = args.interval or min(10.0, args.heartbeat)
    config = AgentConfig(
        node_name=args.node_name,
        interval=interval,
        inventory_interval=args.inventory_interval,
        hf_cache=args.hf_cache,
        lora_dirs=tuple(args.lora_dir),
        disk_probe_interval=args.disk_probe_interval,
        disk_probe_bytes=max(args.disk_probe_bytes, 0),
        pull_bytes_per_second=args.pull_bytes_per_second,
        download_bytes_per_second=args.download_bytes_per_second,
        host_root=args.host_root,
    )
    publisher = None
    sink = None
    if not args.print:
        from gpu_agent.publisher import Backoff, KubernetesSink, Publisher

        try:
            sink = KubernetesSink(args.kubeconfig)
        except Exception as exc:  # kubernetes missing, or no usable configuration
            print(f"gpusched-agent: error: cannot configure the Kubernetes client: {exc}", file=sys.stderr)
            reader.close()
            return EXIT_WRITE_FAILED
        if args.lease_duration <= args.heartbeat:
            print("gpusched-agent: error: --lease-duration must be longer than --heartbeat", file=sys.stderr)
            reader.close()
            return EXIT_WRITE_FAILED
        publisher = Publisher(
            sink,
            heartbeat=args.heartbeat,
            refresh=args.refresh,
            lease_duration=args.lease_duration,
            lease_namespace=args.lease_namespace,
            min_interval=args.min_write_interval,
            backoff=Backoff(maximum=max(60.0, args.heartbeat)),
        )
    pods = _pod_source(args.podresources_socket)
    images = _image_source(args.cri_socket)
    agent = Agent(config, reader, pods=pods, images=images, publisher=publisher)

    try:
        if args.once:
            try:
                report = agent.collect()
            except NvmlReadError as exc:
                print(f"gpusched-agent: error: reading the GPUs failed: {exc}", file=sys.stderr)
                return EXIT_NO_NVML
            if args.print:
                print(dumps(report))
                return 0
            assert publisher is not None
            publisher.offer(report)
            if publisher.publish_if_due():
                log.info("wrote GPUNodeReport %s", args.node_name)
                return 0
            print(f"gpusched-agent: error: writing the report failed: {publisher.stats.last_error}", file=sys.stderr)
            return EXIT_WRITE_FAILED
        return _run(agent, args)
    finally:
        for source in (pods, images, sink):
            if source is not None:
                source.close()
        reader.close()


def _run(agent: Any, args: argparse.Namespace) -> int:
    from gpu_agent.report import dumps

    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    server = None
    if args.metrics_port is not None:
        from gpu_agent.metrics import serve

        server = serve(agent, args.metrics_port, args.metrics_address)
        log.info("metrics on %s:%d/metrics", args.metrics_address, args.metrics_port)
    log.info(
        "agent for node %s: sample every %.1fs, heartbeat %.1fs", args.node_name, agent.config.interval, args.heartbeat
    )
    try:
        if args.print:
            while not stop.is_set():
                print(dumps(agent.collect(), pretty=False), flush=True)
                stop.wait(agent.config.interval)
        else:
            agent.run(stop)
    finally:
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
