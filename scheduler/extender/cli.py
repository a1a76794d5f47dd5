"""gpusched-extender: serve the extender from a live cluster (informers) or a scenario file."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.scenario import ScenarioError, load_nodes, load_pods
from scheduler.extender.app import create_app
from scheduler.extender.binders import ApiBinder, OfflineBinder
from scheduler.extender.routing import LeaderRouting
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.informer import stale_views, start_informers
from scheduler.state.kube import Kube, load_api_client
from scheduler.state.leader import LeaderElector, Timing
from scheduler.state.store import ClusterState


def load_config_file(path: str | None) -> SchedulerConfig:
    data: Any = None
    if path:
        data = yaml.safe_load(Path(path).read_text())
    return registry.config_from(data)


def build_offline(config: SchedulerConfig, scenario: dict[str, Any]) -> ExtenderService:
    state = ClusterState(config)
    state.load_static(load_nodes(scenario), load_pods(scenario, config.gpu_resource))
    return ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics(), offline=True)


@dataclass(frozen=True)
class Election:
    """Where the replicas elect their leader, and how this one is known and reached."""

    namespace: str
    name: str
    identity: str
    url: str
    timing: Timing = field(default_factory=Timing)


def build_live(
    config: SchedulerConfig,
    kubeconfig: str | None,
    lease_namespace: str = "gpusched-system",
    election: Election | None = None,
) -> tuple[ExtenderService, LeaderRouting | None, Callable[[], dict[str, str]]]:
    """The service over live informers; with `election`, also the elector (started) and the routing
    that sends verbs to the leader. A replica campaigns only once its informers have synced.
    Also the informers' stale views (kind -> why), for the app to refuse to decide from them."""
    kube = Kube(load_api_client(kubeconfig))
    state = ClusterState(config)
    metrics = ExtenderMetrics()
    informers = start_informers(
        kube,
        state,
        on_restart=lambda kind, why: metrics.watch_restarts.labels(kind, why).inc(),
        lease_namespace=lease_namespace,
    )

    def stale() -> dict[str, str]:
        views = stale_views(informers, config.informer_grace_s)
        for informer in informers:
            current = informer.synced.is_set() and not informer.stale(config.informer_grace_s)
            metrics.informer_synced.labels(informer.kind).set(1 if current else 0)
        return views

    def ready() -> bool:
        return not stale()

    if election is None:
        return ExtenderService(state, registry.build(config), ApiBinder(kube), metrics, ready=ready), None, stale
    metrics.leader.set(0)
    elector = LeaderElector(
        kube,
        election.namespace,
        election.name,
        election.identity,
        election.url,
        election.timing,
        can_lead=ready,
        on_change=lambda leading: metrics.leader.set(1 if leading else 0),
    )
    routing = LeaderRouting(elector)
    elector.start()
    # Ready (in the Service) when a verb sent here is answered: by this replica or by the leader.
    service = ExtenderService(
        state, registry.build(config), ApiBinder(kube), metrics, ready=lambda: ready() and routing.has_leader()
    )
    return service, routing, stale


def no_stale_views() -> dict[str, str]:
    """Offline, the scenario is the whole view: never stale."""
    return {}


def advertised_url(address: str, port: int) -> str:
    host = address if address not in ("", "0.0.0.0", "::") else socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
    election = parser.add_argument_group("leader election (kube-scheduler's flags and defaults)")
    election.add_argument(
        "--leader-elect",
        action="store_true",
        help="run as one of several replicas: the Lease holder answers, the others forward to it",
    )
    election.add_argument("--leader-elect-resource-name", default="gpusched-extender", help="the Lease's name")
    election.add_argument(
        "--leader-elect-resource-namespace",
        default=os.environ.get("POD_NAMESPACE", "gpusched-system"),
        help="the Lease's namespace (default: $POD_NAMESPACE, else gpusched-system)",
    )
    election.add_argument(
        "--leader-elect-identity",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4()}",
        help="this replica's holderIdentity (default: $POD_NAME, else hostname_uuid)",
    )
    election.add_argument(
        "--advertise-address",
        default=os.environ.get("POD_IP", ""),
        help="the address standbys forward verbs to, with --port (default: $POD_IP, else --host)",
    )
    election.add_argument("--leader-elect-lease-duration", type=float, default=Timing.lease_duration_s)
    election.add_argument("--leader-elect-renew-deadline", type=float, default=Timing.renew_deadline_s)
    election.add_argument("--leader-elect-retry-period", type=float, default=Timing.retry_period_s)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config_file(args.config)
        if args.cluster_file:
            scenario = yaml.safe_load(Path(args.cluster_file).read_text()) or {}
            service, routing, stale = build_offline(config, scenario), None, no_stale_views
        else:
            elect = None
            if args.leader_elect:
                elect = Election(
                    args.leader_elect_resource_namespace,
                    args.leader_elect_resource_name,
                    args.leader_elect_identity,
                    advertised_url(args.advertise_address or args.host, args.port),
                    Timing(
                        args.leader_elect_lease_duration,
                        args.leader_elect_renew_deadline,
                        args.leader_elect_retry_period,
                    ),
                )
            service, routing, stale = build_live(config, args.kubeconfig, args.lease_namespace, elect)
    except (ConfigError, ScenarioError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"gpusched-extender: {exc}", file=sys.stderr)
        return 2
    app = create_app(service, routing, stale)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    if routing is not None:  # shut down (SIGTERM): hand the Lease over rather than let it expire
        routing.elector.stop(release=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
