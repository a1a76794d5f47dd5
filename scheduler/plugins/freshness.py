"""freshness (filter and score): trust a node's GPU view only while its report is fresh.

Filter: a node whose GPUNodeReport is older than `reportTTLSeconds` is turned away with the report's
age, because its free-GPU and cache view may be wrong (the agent stopped or the node is cut off).
The rejection is transient: when no node fits and a stale report is among the reasons, the extender
answers with an Error so that kube-scheduler retries the pod after its backoff (seconds) rather than
parking it until some unrelated cluster event, since a report turning fresh is no event it watches.
A node with no report at all passes: it is placed by its allocatable GPU count alone, and plugins
that need report data treat it as unknown. Arg `requireReport: true` turns such nodes away too.
Score: 100 - 50 * age / ttl for a fresh report (100 when new, 50 at the TTL), `scoreMissing`
(default 0) without a report. Range 0..100.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from scheduler.core.args import PluginArgs
from scheduler.core.config import SchedulerConfig
from scheduler.core.framework import Cycle, FilterPlugin, ScorePlugin


class FreshnessArgs(PluginArgs, frozen=True):
    require_report: bool = False
    score_missing: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0


class Freshness(FilterPlugin, ScorePlugin):
    name = "freshness"
    Args = FreshnessArgs
    transient = True  # the agent may report again at any moment

    def __init__(self, args: FreshnessArgs, config: SchedulerConfig) -> None:
        super().__init__(args, config)
        self.require_report = args.require_report
        self.score_missing = args.score_missing

    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap = cycle.snapshot
        if not (cycle.pod.wants_gpu or cycle.pod.wants_mig):
            return np.ones(nodes.size, dtype=bool)
        # Fresh: written at most the TTL before now, or ahead of now (clock skew). A node without
        # a report has time inf: it passes unless a report is required.
        oldest_fresh = snap.read_at - self.config.report_ttl_s
        if self.require_report:
            return (snap.report_time[nodes] >= oldest_fresh) & snap.has_report[nodes]
        if snap.earliest_report_time() >= oldest_fresh:
            return np.ones(nodes.size, dtype=bool)  # every report is fresh: no node's is read
        return snap.report_time[nodes] >= oldest_fresh

    def reason(self, cycle: Cycle, node: int) -> str:
        snap = cycle.snapshot
        if not snap.has_report[node]:
            return "node has no GPUNodeReport (requireReport is on)"
        age = snap.read_at - snap.report_time[node]
        return f"GPUNodeReport is stale: {age:.0f}s old, TTL {self.config.report_ttl_s:.0f}s"

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        snap = cycle.snapshot
        # A report stamped ahead of this clock (node clock skew) counts as new, never newer.
        age = np.minimum(np.maximum(snap.read_at - snap.report_time[nodes], 0.0), self.config.report_ttl_s)
        fresh = 100.0 - 50.0 * age / self.config.report_ttl_s
        return np.where(snap.has_report[nodes], fresh, self.score_missing)
