"""gpusched's Grafana dashboards, built with grafana-foundation-sdk and written as JSON beside this file.

    .venv/bin/python manifests/dashboards/generate.py          # rewrite the *.json files
    .venv/bin/python manifests/dashboards/generate.py --check  # exit 1 if a file differs

The JSON files are what Grafana imports (and what the kustomization's configMapGenerator ships);
this module is their source. tests/integration/test_manifests.py checks that the files match it, and
the Prometheus tests run every panel's query against a real Prometheus.

Every panel reads one Prometheus data source chosen by the `datasource` variable, and uses
`$__rate_interval` for rates. Conventions: a counter's panel shows a rate; panels whose series appear
only after the first error add the same label set at 0 (`or ... 0 * <a gauge that is always there>`),
so "no errors" reads 0, not "No data".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
NODE = 'node=~"$node"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: Sequence[Query]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    stacked: bool = False
    max_value: float | None = None


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: Sequence[tuple[str, Sequence[Panel]]]
    node_variable: bool = False
    tags: Sequence[str] = field(default=("gpusched",))


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def quantile(phi: float, histogram: str, by: str) -> str:
    return f"histogram_quantile({phi}, sum by ({by}, le) (rate({histogram}_bucket[{RATE}])))"


LATENCY = "gpusched_extender_request_duration_seconds"
COLD_START = "gpusched_predicted_cold_start_seconds"


# ------------------------------------------------------------------------------------ boards
CLUSTER = Board(
    uid="gpusched-cluster",
    title="gpusched / Cluster GPUs",
    description="GPU allocation and fragmentation in gpusched's view, and what the agents measure.",
    rows=[
        (
            "Allocation",
            [
                Panel("Free GPUs", [q('sum(gpusched_cluster_gpus{state="free"})')], kind="stat", width=6, height=4),
                Panel(
                    "Allocated GPUs",
                    [q('sum(gpusched_cluster_gpus{state=~"allocated|partial"})')],
                    kind="stat",
                    width=6,
                    height=4,
                ),
                Panel(
                    "GPU allocation",
                    [
                        q(
                            'sum(gpusched_cluster_gpus{state=~"allocated|partial"})'
                            ' / clamp_min(sum(gpusched_cluster_gpus{state!="unhealthy"}), 1)'
                        )
                    ],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    height=4,
                    max_value=1,
                ),
                Panel(
                    "Unhealthy GPUs",
                    [q('sum(gpusched_cluster_gpus{state="unhealthy"})')],
                    kind="stat",
                    width=6,
                    height=4,
                ),
                Panel(
                    "GPUs by state",
                    [q("sum by (state) (gpusched_cluster_gpus)", "{{state}}")],
                    stacked=True,
                    description="free: whole GPUs free; partial: shared GPUs with a share left; allocated: all held",
                ),
                Panel(
                    "Nodes by report state",
                    [
                        q("sum by (report) (gpusched_cluster_nodes)", "{{report}}"),
                        q("gpusched_cluster_stale_reports", "stale (older than reportTTLSeconds)"),
                    ],
                ),
            ],
        ),
        (
            "Fragmentation",
            [
                Panel(
                    "Fragmented GPUs",
                    [q("gpusched_cluster_fragmented_gpus", "fragmented")],
                    description="Free GPU capacity, in GPUs, that the typical pods cannot use (FGD measure)",
                ),
                Panel(
                    "Fragmentation ratio",
                    [q("gpusched_cluster_gpu_fragmentation_ratio", "fragmented / free")],
                    unit="percentunit",
                    max_value=1,
                ),
            ],
        ),
        (
            "Measured by the agents",
            [
                Panel(
                    "GPU utilisation (mean over GPUs)",
                    [q("avg(gpusched_agent_gpu_utilization_ratio)", "mean")],
                    unit="percentunit",
                    max_value=1,
                ),
                Panel(
                    "GPU memory in use",
                    [
                        q(
                            "sum(gpusched_agent_gpu_memory_used_bytes)"
                            " / clamp_min(sum(gpusched_agent_gpu_memory_total_bytes), 1)",
                            "used / total",
                        )
                    ],
                    unit="percentunit",
                    max_value=1,
                ),
            ],
        ),
    ],
)

SCHEDULER = Board(
    uid="gpusched-scheduler",
    title="gpusched / Scheduler decisions and latency",
    description="What kube-scheduler asks the extender, how fast it answers, and why nodes are turned away.",
    rows=[
        (
            "Requests",
            [
                Panel("Extender up", [q('sum(up{job="gpusched-extender"})', "up")], kind="stat", width=6, height=4),
                Panel(
                    "Requests",
                    [q(f"sum(rate(gpusched_extender_requests_total[{RATE}]))")],
                    unit="reqps",
                    kind="stat",
                    width=6,
                    height=4,
                ),
                Panel(
                    "Assumed pods",
                    [q("sum(gpusched_assumed_pods)")],
                    kind="stat",
                    width=6,
                    height=4,
                    description="Pods bound by gpusched that the API does not show bound yet",
                ),
                Panel(
                    "Snapshot age",
                    [q("max(gpusched_snapshot_age_seconds)")],
                    unit="s",
                    kind="stat",
                    width=6,
                    height=4,
                    description="Seconds since gpusched's view of the cluster last changed",
                ),
                Panel(
                    "Requests by verb",
                    [
                        q(f"sum by (verb) (rate(gpusched_extender_requests_total[{RATE}]))", "{{verb}}"),
                    ],
                    unit="reqps",
                ),
                Panel(
                    "Failed requests by verb and outcome",
                    [
                        q(
                            f'sum by (verb, outcome) (rate(gpusched_extender_requests_total{{outcome!="ok"}}[{RATE}]))'
                            f" or sum by (verb) (0 * rate(gpusched_extender_requests_total[{RATE}]))",
                            "{{verb}} {{outcome}}",
                        )
                    ],
                    unit="reqps",
                    description="bad_request: malformed input; error: gpusched failed (see its log)",
                ),
            ],
        ),
        (
            "Latency",
            [
                Panel("p99 latency by verb", [q(quantile(0.99, LATENCY, "verb"), "{{verb}}")], unit="s"),
                Panel("p50 latency by verb", [q(quantile(0.5, LATENCY, "verb"), "{{verb}}")], unit="s"),
            ],
        ),
        (
            "Decisions",
            [
                Panel(
                    "Filter rejections by plugin",
                    [
                        q(f"sum by (plugin) (rate(gpusched_filter_rejections_total[{RATE}]))", "{{plugin}}"),
                    ],
                    unit="ops",
                    description="Nodes turned away per second by each gpusched filter",
                ),
                Panel(
                    "Binds by result",
                    [q(f"sum by (result) (rate(gpusched_binds_total[{RATE}]))", "{{result}}")],
                    unit="ops",
                ),
            ],
        ),
        (
            "Cluster view",
            [
                Panel(
                    "Informers synced", [q("min by (resource) (gpusched_informer_synced)", "{{resource}}")], max_value=1
                ),
                Panel(
                    "Watch restarts",
                    [
                        q(
                            f"sum by (resource, reason) (increase(gpusched_watch_restarts_total[{RATE}]))"
                            " or sum by (resource) (0 * gpusched_informer_synced)",
                            "{{resource}} {{reason}}",
                        )
                    ],
                    description="Informer watches restarted (timeouts, 410 Gone relists, errors)",
                ),
            ],
        ),
    ],
)

GANGS = Board(
    uid="gpusched-gangs",
    title="gpusched / Gangs",
    description="All-or-nothing groups: plans waiting for members, GPUs held for them, placements and expiries.",
    rows=[
        (
            "Now",
            [
                Panel("Gangs pending", [q("sum(gpusched_gangs_pending)")], kind="stat", width=6, height=4),
                Panel(
                    "GPUs reserved for gangs", [q("sum(gpusched_gang_reserved_gpus)")], kind="stat", width=6, height=4
                ),
                Panel(
                    "Gangs placed (1h)",
                    [q("sum(increase(gpusched_gangs_placed_total[1h]))")],
                    kind="stat",
                    width=6,
                    height=4,
                ),
                Panel(
                    "Reservations expired (1h)",
                    [q("sum(increase(gpusched_gang_reservations_expired_total[1h]))")],
                    kind="stat",
                    width=6,
                    height=4,
                ),
            ],
        ),
        (
            "Over time",
            [
                Panel(
                    "Pending gangs and reserved GPUs",
                    [
                        q("sum(gpusched_gangs_pending)", "gangs pending"),
                        q("sum(gpusched_gang_reserved_gpus)", "GPUs reserved"),
                    ],
                ),
                Panel(
                    "Gangs placed and reservations expired",
                    [
                        q(f"sum(increase(gpusched_gangs_placed_total[{RATE}]))", "placed"),
                        q(f"sum(increase(gpusched_gang_reservations_expired_total[{RATE}]))", "expired"),
                    ],
                    description="Expired: a plan released because its members did not all arrive in time",
                ),
            ],
        ),
    ],
)

COLD_STARTS = Board(
    uid="gpusched-cold-starts",
    title="gpusched / Cold starts and caches",
    description="Predicted time to pull images and load weights for the pods gpusched placed, and node caches.",
    rows=[
        (
            "Predicted cold start of placed pods",
            [
                Panel(
                    "p50 and p90 by workload",
                    [
                        q(quantile(0.5, COLD_START, "workload"), "p50 {{workload}}"),
                        q(quantile(0.9, COLD_START, "workload"), "p90 {{workload}}"),
                    ],
                    unit="s",
                ),
                Panel(
                    "Placed warm (predicted under 10 s)",
                    [
                        q(
                            f'sum(rate(gpusched_predicted_cold_start_seconds_bucket{{le="10.0"}}[{RATE}]))'
                            f" / sum(rate(gpusched_predicted_cold_start_seconds_count[{RATE}]))",
                            "share placed warm",
                        )
                    ],
                    unit="percentunit",
                    max_value=1,
                ),
                Panel(
                    "Placements by predicted seconds",
                    [q(f"sum by (le) (increase(gpusched_predicted_cold_start_seconds_bucket[{RATE}]))", "{{le}}")],
                    stacked=True,
                    description="Pods placed per interval, by upper bound of predicted seconds",
                ),
                Panel(
                    "Predicted against measured cold start, by model",
                    [
                        q(
                            f'sum by (model) ({COLD_START}_sum{{model!=""}}) / sum by (model) ({COLD_START}_count)',
                            "predicted {{model}}",
                        ),
                        q("avg by (model) (gpusched_inference_weights_load_seconds)", "measured {{model}}"),
                    ],
                    unit="s",
                    description=(
                        "Predicted: the mean cold-start prediction of the pods gpusched placed with that "
                        "gpusched.io/model (image pull, weights download and read), since the extender "
                        "started. Measured: the weights-load time the inference servers report (from the "
                        "node's cache to the device), mean over replicas. Measured well above predicted "
                        "means the node's disk is slower than gpusched assumes."
                    ),
                ),
            ],
        ),
        (
            "Node caches (agents)",
            [
                Panel(
                    "Cached bytes by kind",
                    [q("sum by (kind) (gpusched_agent_cache_bytes)", "{{kind}}")],
                    unit="bytes",
                    stacked=True,
                ),
                Panel(
                    "Cached bytes by node", [q("sum by (node) (gpusched_agent_cache_bytes)", "{{node}}")], unit="bytes"
                ),
                Panel(
                    "Disk read throughput",
                    [q("gpusched_agent_disk_read_bytes_per_second", "{{node}}")],
                    unit="Bps",
                    description="Last sequential read measured by each node's agent",
                ),
            ],
        ),
    ],
)

NODE_DETAIL = Board(
    uid="gpusched-node",
    title="gpusched / Node GPUs",
    description="Per-GPU detail from each node's gpusched agent.",
    node_variable=True,
    rows=[
        (
            "GPUs",
            [
                Panel(
                    "GPU memory in use",
                    [q(f"gpusched_agent_gpu_memory_used_bytes{{{NODE}}}", "{{node}} GPU {{gpu}}")],
                    unit="bytes",
                ),
                Panel(
                    "GPU memory in use (share)",
                    [
                        q(
                            f"gpusched_agent_gpu_memory_used_bytes{{{NODE}}}"
                            f" / gpusched_agent_gpu_memory_total_bytes{{{NODE}}}",
                            "{{node}} GPU {{gpu}}",
                        )
                    ],
                    unit="percentunit",
                    max_value=1,
                ),
                Panel(
                    "GPU utilisation",
                    [q(f"gpusched_agent_gpu_utilization_ratio{{{NODE}}}", "{{node}} GPU {{gpu}}")],
                    unit="percentunit",
                    max_value=1,
                ),
                Panel("Unhealthy GPUs", [q(f"sum by (node) (1 - gpusched_agent_gpu_healthy{{{NODE}}})", "{{node}}")]),
                Panel(
                    "Active NVLink links",
                    [
                        q(f"gpusched_agent_gpu_nvlink_active_links{{{NODE}}}", "{{node}} GPU {{gpu}}"),
                    ],
                ),
            ],
        ),
        (
            "Agent",
            [
                Panel(
                    "Report age",
                    [q(f"gpusched_agent_report_age_seconds{{{NODE}}}", "{{node}}")],
                    unit="s",
                    description="Seconds since the reportTime of the last GPUNodeReport the API accepted",
                ),
                Panel(
                    "Report writes",
                    [
                        q(
                            f"sum by (node, result) (rate(gpusched_agent_report_writes_total{{{NODE}}}[{RATE}]))",
                            "{{node}} {{result}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "NVML errors",
                    [
                        q(
                            f"sum by (node, kind) (rate(gpusched_agent_nvml_errors_total{{{NODE}}}[{RATE}]))"
                            f" or sum by (node) (0 * gpusched_agent_gpu_healthy{{{NODE}}})",
                            "{{node}} {{kind}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "Source errors",
                    [
                        q(
                            f"sum by (node, kind) (rate(gpusched_agent_source_errors_total{{{NODE}}}[{RATE}]))"
                            f" or sum by (node) (0 * gpusched_agent_gpu_healthy{{{NODE}}})",
                            "{{node}} {{kind}}",
                        )
                    ],
                    unit="ops",
                    description="Failed reads of NVML, the kubelet PodResources socket or the CRI socket",
                ),
            ],
        ),
    ],
)

BOARDS = (CLUSTER, SCHEDULER, GANGS, COLD_STARTS, NODE_DETAIL)


# ------------------------------------------------------------------------------------- build
def _panel(spec: Panel, panel_id: int) -> Any:
    builder: Any = stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    builder = builder.id(panel_id).title(spec.title).datasource(DATASOURCE).unit(spec.unit)
    builder = builder.span(spec.width).height(spec.height)
    if spec.description:
        builder = builder.description(spec.description)
    if spec.max_value is not None:
        builder = builder.min(0).max(spec.max_value)
    if spec.kind == "stat":
        builder = builder.graph_mode(BigValueGraphMode.AREA)
    else:
        builder = builder.fill_opacity(10 if not spec.stacked else 40)
        if spec.stacked:
            builder = builder.stacking(StackingConfig().mode(StackingMode.NORMAL))
    for ref, query in zip("ABCDEFGH", spec.queries, strict=False):
        target = prometheus.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def build(board: Board) -> dict[str, Any]:
    """One dashboard as the JSON object Grafana imports."""
    builder = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(list(board.tags))
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .editable()
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    if board.node_variable:
        builder = builder.with_variable(
            dashboard.QueryVariable("node")
            .label("Node")
            .datasource(DATASOURCE)
            .query("label_values(gpusched_agent_gpu_healthy, node)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    panel_id = 1
    for title, panels in board.rows:
        builder = builder.with_row(dashboard.Row(title).id(panel_id))
        panel_id += 1
        for spec in panels:
            builder = builder.with_panel(_panel(spec, panel_id))
            panel_id += 1
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return data


def render(board: Board) -> str:
    return json.dumps(build(board), indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    return {HERE / f"{board.uid}.json": render(board) for board in BOARDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a JSON file differs from its source here")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.name} is out of date: run {Path(__file__).name}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
