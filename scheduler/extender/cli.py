"""gpusched-extender: serve the extender from a live cluster (informers) or a scenario file."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.scenario import ScenarioError, load_nodes, load_pods
from scheduler.extender.app import create_app
from scheduler.extender.binders import ApiBinder, OfflineBinder
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.informer import start_informers
from scheduler.state.kube import Kube, load_api_client
from scheduler.state.store import ClusterState


def load_config_file(path: str | None) -> SchedulerConfig:
    data: Any = None
    if path:
        data = yaml.safe_load(Path(path).read_text())
    return registry.config_from(data)


def build_offline(config: SchedulerConfig, scenario: dict[str, Any]) -> ExtenderService:
    state = ClusterState(config)
    state.load_static(load_nodes(scenario), load_pods(scenario, config.gpu_resource))
    return ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics())


def build_live(
    config: SchedulerConfig, kubeconfig: str | None, lease_namespace: str = "gpusched-system"
) -> ExtenderService:
    kube = Kube(load_api_client(kubeconfig))
    state = ClusterState(config)
    metrics = ExtenderMetrics()
    informers = start_informers(
        kube,
        state,
        on_restart=lambda kind, why: metrics.watch_restarts.labels(kind, why).inc(),
        lease_namespace=lease_namespace,
    )

    def ready() -> bool:
        for informer in informers:
            metrics.informer_synced.labels(informer.kind).set(1 if informer.synced.is_set() else 0)
        # Pull events only refine cold-start estimates: they do not hold readiness back.
        return all(i.synced.is_set() for i in informers if i.kind != "events")

    return ExtenderService(state, registry.build(config), ApiBinder(kube), metrics, ready=ready)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpusched-extender", description=__doc__)
    parser.add_argument("--config", help="scheduler config (YAML): plugins, weights, args")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--kubeconfig", help="kubeconfig to watch the cluster with (default: in-cluster, then $KUBECONFIG)"
    )
    source.add_argument("--cluster-file", help="serve offline from a scenario file instead of a cluster")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("GPUSCHED_LEASE_NAMESPACE", "gpusched-system"),
        help="where the agents renew their nodes' Leases (default: gpusched-system)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config_file(args.config)
        if args.cluster_file:
            scenario = yaml.safe_load(Path(args.cluster_file).read_text()) or {}
            service = build_offline(config, scenario)
        else:
            service = build_live(config, args.kubeconfig, args.lease_namespace)
    except (ConfigError, ScenarioError, OSError, yaml.YAMLError) as exc:
        print(f"gpusched-extender: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
