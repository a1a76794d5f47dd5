"""What-if replay of a scenario's workload through the core, under one or more policies.

The scenario is scheduler/core/scenario.py's format (nodeTypes, nodes, pods) plus a `workload`
list; each entry is an inference Deployment or a training gang:

    workload:
      - {name: chat-8b, kind: inference, replicas: 8, gpus: 1, gpuMemory: 40Gi,
         image: ghcr.io/acme/vllm:0.6, model: meta-llama/Llama-3.1-8B@main, modelBytes: 16Gi,
         loraAdapters: [acme/support-bot], arrive: 0, every: 30, duration: 7200}
      - {name: pretrain-a, kind: training, members: 4, gpus: 8, image: ghcr.io/acme/train:2,
         arrive: 120, duration: 3600}

Times are seconds from the start; `duration` is how long a pod (or a whole gang) runs once placed
(absent: to the end). Pods that find no node wait and are tried again after every departure.
gpusched's policy plans each gang whole (scheduler/core/gang.py, the extender's own planner);
the kube-default-like baseline places gang members one at a time as kube-scheduler would, so a
gang can end up split across racks or half placed. After a placement the node is taken to hold
the pod's image and weights, so later replicas there start warm.

Measures, per policy: GPU allocation over time; stranded GPUs (free GPUs on nodes that are partly
used, which a whole-node training member cannot use); pods pending at the end and why; for each
gang whether it was placed whole, how many racks (leaf switches or GKE subblocks) it spans and the
innermost topology tier that holds it; and the predicted cold-start seconds of each inference pod
(plugins/cold_start.py's formula at the moment of placement). The fragmentation plugins' typical
pods are the shapes of every pod the scenario runs (its running pods and its workload).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from scheduler.core.fragmentation import TypicalPod, shape_of, typical_pods
from scheduler.core.framework import Cycle, Decision, Framework
from scheduler.core.gang import GangPlan, plan_gang, tier_name
from scheduler.core.images import normalize_image
from scheduler.core.podspec import parse_pod
from scheduler.core.scenario import ScenarioError, load_nodes, load_pods, pod_object
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.topology import DEFAULT_TIERS, RACK_KEYS, TOPOGRAPH_LEAF
from scheduler.core.types import NodeState, PodRequest
from scheduler.plugins import registry
from scheduler.plugins.cold_start import predicted_seconds
from scheduler.plugins.disk_fit import DiskFit
from simulations import policies


def rack_of(node: NodeState) -> tuple[str, ...]:
    """The node's rack: its leaf switch (Topograph) or subblock (GKE), within the tiers outside it
    (subblock sb1 of block b1 is not sb1 of b2); a node without either is a rack of its own."""
    for key in RACK_KEYS:
        if key in node.labels:
            outer = DEFAULT_TIERS[: DEFAULT_TIERS.index(key) + 1]
            return tuple(f"{k}={node.labels.get(k, '')}" for k in outer)
    return (node.name,)


@dataclass(frozen=True)
class Job:
    """One unit of arrival: an inference replica (one pod) or a training gang (several)."""

    name: str
    kind: str  # "inference" or "training"
    pods: tuple[PodRequest, ...]
    arrive: float
    duration: float | None


@dataclass
class PodOutcome:
    name: str
    job: str
    kind: str
    arrived_at: float = 0.0
    node: str | None = None
    gpus: int = 0
    placed_at: float | None = None
    cold_start_s: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    kept_off: dict[str, str] = field(default_factory=dict)  # node -> why disk-fit turned it away
    disk_short: str = ""  # placed where what it must fetch does not fit the disk (policies without disk-fit)


@dataclass
class GangOutcome:
    name: str
    members: int
    placed: int = 0
    whole: bool = False
    racks: int = 0
    span: str = ""
    waited_s: float | None = None


@dataclass
class JobOutcome:
    """A job's arrival, start (its last pod placed) and end (start + duration); None when it never did."""

    name: str
    kind: str  # "training" (a gang), "batch" (a pod with a duration) or "service" (runs to the end)
    arrive: float
    pods: int
    start: float | None = None
    end: float | None = None

    @property
    def completion_s(self) -> float | None:
        """Job completion time: from arrival to the end of its run."""
        return None if self.end is None else self.end - self.arrive


def _stat(values: Sequence[float], what: str) -> float | None:
    if not values:
        return None
    return round(float(np.mean(values) if what == "mean" else np.percentile(values, 95)), 1)


@dataclass
class PolicyResult:
    policy: str
    total_gpus: int
    # t, GPUs allocated, stranded, pods pending, GPUs held by pods whose job has not started (a gang's
    # members placed while the rest wait): allocated, but running nothing.
    timeline: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    pods: list[PodOutcome] = field(default_factory=list)
    gangs: list[GangOutcome] = field(default_factory=list)
    jobs: list[JobOutcome] = field(default_factory=list)

    def end(self) -> float:
        """When the replay's last event happened: the last finite job's end, or the last arrival."""
        return self.timeline[-1][0] if self.timeline else 0.0

    def _weights(self, horizon: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(times, seconds each timeline row holds) up to `horizon`; the last row holds to it."""
        times = np.array([t for t, *_ in self.timeline] or [0.0])
        return times, np.diff(times, append=max(times[-1], horizon or 0.0))

    def idle_gpu_hours_while_waiting(self, horizon: float | None = None) -> float:
        """GPU-hours that no pod held while some pod waited: sum over time of (GPUs - allocated)
        during the spans in which at least one pod was pending, up to `horizon`."""
        _, span = self._weights(horizon)
        alloc = np.array([row[1] for row in self.timeline] or [0])
        waiting = np.array([row[3] > 0 for row in self.timeline] or [False])
        return float(np.sum((self.total_gpus - alloc) * span * waiting) / 3600)

    def pending_seconds(self, horizon: float | None = None) -> list[float]:
        """Per pod, seconds from its arrival to its placement (to `horizon` or the end if never placed)."""
        end = max(self.end(), horizon or 0.0)
        return [max((p.placed_at if p.placed_at is not None else end) - p.arrived_at, 0.0) for p in self.pods]

    def summary(self, horizon: float | None = None) -> dict[str, Any]:
        """Totals; time-weighted means run to `horizon` (compare policies over the same span)."""
        times, span = self._weights(horizon)
        alloc = np.array([row[1] for row in self.timeline] or [0])
        stranded = np.array([row[2] for row in self.timeline] or [0])
        held = np.array([row[4] for row in self.timeline] or [0])
        weight = span if span.sum() > 0 else np.ones_like(span)
        cold = [p.cold_start_s for p in self.pods if p.kind == "inference" and p.cold_start_s is not None]
        pending = [p for p in self.pods if p.node is None]
        finite = [j for j in self.jobs if j.kind in ("training", "batch")]
        done = [j.completion_s for j in finite if j.completion_s is not None]
        pod_waits = self.pending_seconds(horizon)
        return {
            "policy": self.policy,
            "gpus": self.total_gpus,
            "horizon_s": round(float(max(times[-1], horizon or 0.0)), 1),
            "mean_allocated_pct": round(float(100 * np.average(alloc, weights=weight) / max(self.total_gpus, 1)), 2),
            "mean_running_pct": round(
                float(100 * np.average(alloc - held, weights=weight) / max(self.total_gpus, 1)), 2
            ),
            "mean_stranded_gpus": round(float(np.average(stranded, weights=weight)), 2),
            "peak_stranded_gpus": int(stranded.max()),
            "pods_placed": len(self.pods) - len(pending),
            "pods_pending": len(pending),
            "pods_kept_off_by_disk_fit": sum(bool(p.kept_off) for p in self.pods),
            "pods_placed_where_disk_short": sum(bool(p.disk_short) for p in self.pods),
            "pending_reasons": _count(p.reason for p in pending),
            "gangs": len(self.gangs),
            "gangs_whole": sum(g.whole for g in self.gangs),
            "gangs_split_across_racks": sum(g.racks > 1 for g in self.gangs),
            "gangs_partly_placed": sum(0 < g.placed < g.members for g in self.gangs),
            "gang_wait_mean_s": round(float(np.mean(waits)), 1)
            if (waits := [g.waited_s for g in self.gangs if g.waited_s is not None])
            else None,
            "cold_start_mean_s": round(float(np.mean(cold)), 1) if cold else None,
            "cold_start_p95_s": round(float(np.percentile(cold, 95)), 1) if cold else None,
            "cold_start_total_s": round(float(np.sum(cold)), 1) if cold else None,
            # Training gangs and batch pods (those with a duration): makespan is when the last ends.
            "makespan_s": round(max(j.end for j in finite if j.end is not None), 1)
            if finite and len(done) == len(finite)
            else None,
            "jobs_finished": f"{len(done)}/{len(finite)}",
            "jct_mean_s": _stat(done, "mean"),
            "jct_p95_s": _stat(done, "p95"),
            "jct_training_mean_s": _stat(
                [j.completion_s for j in finite if j.kind == "training" and j.completion_s is not None], "mean"
            ),
            "idle_gpu_hours_while_waiting": round(self.idle_gpu_hours_while_waiting(horizon), 1),
            "pending_mean_s": _stat(pod_waits, "mean"),
            "pending_p95_s": _stat(pod_waits, "p95"),
        }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------- scenario
def load_jobs(scenario: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> list[Job]:
    jobs: list[Job] = []
    for n, entry in enumerate(scenario.get("workload") or ()):
        where = f"workload[{n}]"
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ScenarioError(f"{where}: needs at least a name")
        kind = str(entry.get("kind", "inference"))
        if kind not in ("inference", "training"):
            raise ScenarioError(f"{where}: kind must be inference or training, not {kind!r}")
        annotations: dict[str, str] = {"gpusched.io/workload": kind}
        for key, ann in (
            ("gpuMemory", "gpu-memory"),
            ("model", "model"),
            ("modelBytes", "model-bytes"),
            ("cuda", "cuda"),
            ("gpuModels", "gpu-models"),
        ):
            if entry.get(key) is not None:
                value = entry[key]
                annotations[f"gpusched.io/{ann}"] = ",".join(value) if isinstance(value, list) else str(value)
        if entry.get("loraAdapters"):
            annotations["gpusched.io/lora-adapters"] = ",".join(entry["loraAdapters"])
        base = {
            "gpus": entry.get("gpus", 1),
            "image": entry.get("image", "registry.k8s.io/pause:3.10"),
            "cpu": entry.get("cpu", "8"),
            "memory": entry.get("memory", "64Gi"),
        }
        arrive = float(entry.get("arrive", 0))
        duration = float(entry["duration"]) if entry.get("duration") is not None else None
        name = str(entry["name"])
        if kind == "training":
            members = int(entry.get("members", 1))
            gang_annotations = {**annotations, "gpusched.io/min-member": str(members)}
            pods = tuple(
                _parse(
                    where,
                    {
                        **base,
                        "name": f"{name}-{r}",
                        "annotations": gang_annotations,
                        "labels": {
                            "scheduling.x-k8s.io/pod-group": name,
                            "batch.kubernetes.io/job-completion-index": str(r),
                        },
                    },
                    gpu_resource,
                )
                for r in range(members)
            )
            jobs.append(Job(name, kind, pods, arrive, duration))
        else:
            every = float(entry.get("every", 0))
            for r in range(int(entry.get("replicas", 1))):
                obj = pod_object({**base, "name": f"{name}-{r}", "annotations": annotations}, gpu_resource)
                obj["metadata"]["ownerReferences"] = [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": name, "controller": True}
                ]
                pod = parse_pod(obj, gpu_resource)
                if pod.errors:
                    raise ScenarioError(f"{where}: {'; '.join(pod.errors)}")
                jobs.append(Job(f"{name}-{r}", kind, (pod,), arrive + r * every, duration))
    return jobs


def _parse(where: str, entry: dict[str, Any], gpu_resource: str) -> PodRequest:
    pod = parse_pod(pod_object(entry, gpu_resource), gpu_resource)
    if pod.errors:
        raise ScenarioError(f"{where}: {'; '.join(pod.errors)}")
    return pod


def apply_changes(
    scenario: Mapping[str, Any], add_nodes: Mapping[str, int] | None = None, drain: Sequence[str] = ()
) -> dict[str, Any]:
    """The scenario with nodes of a type added and named nodes drained (not schedulable, pods gone)."""
    out = dict(scenario)
    nodes = list(out.get("nodes") or [])
    types = out.get("nodeTypes") or {}
    for kind, count in (add_nodes or {}).items():
        if kind not in types:
            raise ScenarioError(f"--add-nodes: unknown node type {kind!r} (known: {', '.join(types)})")
        nodes.append(
            {
                "name": f"added-{kind}-{{i}}",
                "type": kind,
                "count": int(count),
                "labels": {TOPOGRAPH_LEAF: f"added-{kind}"},
            }
        )
    out["nodes"] = nodes
    drained = set(drain)
    if drained:
        out["drain"] = sorted(drained)
        out["pods"] = [p for p in out.get("pods") or () if p.get("node") not in drained]
    return out


# ------------------------------------------------------------------------------ replay
class Replay:
    """One policy over one cluster and workload."""

    def __init__(
        self,
        nodes: Sequence[NodeState],
        running: Sequence[PodRequest],
        jobs: Sequence[Job],
        policy: str,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.policy = policies.canonical(policy)
        self.typical = workload_typical_pods(running, jobs)
        config = registry.config_from(policies.policy_config(self.policy, typical=self.typical, weights=weights))
        self.framework: Framework = registry.build(config)
        # disk-fit's check with its default arguments, for every policy: which nodes it keeps a pod
        # off (gpusched's policy filters on it) and which placements would not fit (the others').
        self.disk = DiskFit.create()
        self.disk_filtered = "disk-fit" in config.filters
        self.gang_aware = self.policy == "gpusched"
        self.snapshot = ClusterSnapshot(nodes, running, config.tiers)
        self.jobs = list(jobs)
        self.result = PolicyResult(self.policy, int((self.snapshot.gpu_valid & self.snapshot.gpu_healthy).sum()))

    @classmethod
    def from_scenario(
        cls, scenario: Mapping[str, Any], policy: str, weights: Mapping[str, float] | None = None
    ) -> Replay:
        nodes = load_nodes(scenario)
        drained = set(scenario.get("drain") or ())
        unknown = drained - {n.name for n in nodes}
        if unknown:
            raise ScenarioError(f"--drain: unknown nodes {', '.join(sorted(unknown))}")
        nodes = [replace(n, schedulable=False) if n.name in drained else n for n in nodes]
        return cls(nodes, load_pods(scenario), load_jobs(scenario), policy, weights)

    # -- measures
    def _record(self, t: float, pending: int, held: int = 0) -> None:
        snap = self.snapshot
        usable = snap.gpu_valid & snap.gpu_healthy
        free = usable & (snap.gpu_milli_free >= 1000)
        allocated = int(usable.sum() - free.sum())
        free_per_node = free.sum(axis=1)
        partly = (free_per_node > 0) & (free_per_node < usable.sum(axis=1)) & snap.ready
        self.result.timeline.append((t, allocated, int(free_per_node[partly].sum()), pending, held))

    def _warm(self, node: int, pod: PodRequest) -> None:
        """The node pulls the pod's image and weights: later pods there start warm."""
        snap = self.snapshot
        for image in pod.images:
            key = normalize_image(image)
            size = max(snap.images.get(key, {}).values(), default=0)
            if size:
                snap.images.setdefault(key, {})[node] = size
        if pod.model:
            size = pod.model_bytes or max(snap.models.get(pod.model, {}).values(), default=0)
            if size:
                snap.models.setdefault(pod.model, {})[node] = size

    def _placed(
        self, pod: PodRequest, node: int, gpus: Sequence[int], decision: Decision | None, t: float, outcome: PodOutcome
    ) -> None:
        """Record a placement already made in the snapshot: its outcome, then the caches it warms."""
        snap = self.snapshot
        if pod.workload == "inference":
            outcome.cold_start_s = float(predicted_seconds(snap, pod, np.array([node]))[0])
        if not self.disk_filtered:
            where = np.array([node], dtype=np.intp)
            cycle = Cycle(snap, pod, self.framework.config)
            if not self.disk.filter(cycle, where)[0]:
                outcome.disk_short = self.disk.reason(cycle, node)
        self._warm(node, pod)
        outcome.node, outcome.gpus, outcome.placed_at, outcome.reason = snap.names[node], len(gpus), t, ""
        if decision is not None and decision.feasible.size:
            pos = int(np.flatnonzero(decision.feasible == node)[0])
            outcome.scores = {k: round(float(v[pos]), 1) for k, v in decision.scores.items()}

    def _try_pod(self, pod: PodRequest, outcome: PodOutcome, t: float) -> bool:
        if self.disk_filtered:
            cycle = Cycle(self.snapshot, pod, self.framework.config)
            every = np.arange(len(self.snapshot), dtype=np.intp)
            for node in every[~self.disk.filter(cycle, every)].tolist():
                outcome.kept_off[self.snapshot.names[node]] = self.disk.reason(cycle, node)
        decision, best, gpus = self.framework.place_best(self.snapshot, pod)
        if best is None:  # ask again with a reason worded for every node turned away
            decision = self.framework.decide(self.snapshot, pod)
            outcome.reason = decision.error or _first_reason(decision)
            return False
        self._placed(pod, best, gpus, decision, t, outcome)
        return True

    def _try_gang(self, job: Job, outcomes: list[PodOutcome], gang: GangOutcome, t: float) -> bool:
        """gpusched: the whole gang through the planner, or nothing."""
        template = replace(job.pods[0], name=f"{job.name}-member", rank=None)
        plan = plan_gang(self.snapshot, self.framework, template, len(job.pods))
        if not isinstance(plan, GangPlan):
            for o in outcomes:
                o.reason = plan.reason
            return False
        for slot, pod, outcome in zip(plan.slots, job.pods, outcomes, strict=True):
            node = self.snapshot.index[slot.node]
            self.snapshot.place(replace(pod, node_name=slot.node), node, slot.gpus)
            self._placed(pod, node, slot.gpus, None, t, outcome)
        gang.span = plan.span
        return True

    def run(self, progress: Callable[[int, int], None] | None = None) -> PolicyResult:
        events: list[tuple[float, int, int, str]] = []  # (time, order, job index, what)
        for i, job in enumerate(self.jobs):
            heapq.heappush(events, (job.arrive, 1, i, "arrive"))
        outcomes = {
            i: [PodOutcome(p.name, job.name, job.kind, job.arrive) for p in job.pods] for i, job in enumerate(self.jobs)
        }
        gangs = {i: GangOutcome(job.name, len(job.pods)) for i, job in enumerate(self.jobs) if job.kind == "training"}
        waiting: list[int] = []
        self._record(0.0, 0)
        done = 0
        while events:
            t, _, i, what = heapq.heappop(events)
            if what == "depart":
                for pod in self.jobs[i].pods:
                    self.snapshot.remove(pod.key)
                retry, waiting = waiting, []
                for j in retry:
                    if not self._attempt(j, outcomes[j], gangs.get(j), t, events):
                        waiting.append(j)
            elif not self._attempt(i, outcomes[i], gangs.get(i), t, events):
                waiting.append(i)
            self._record(
                t,
                sum(1 for j in waiting for o in outcomes[j] if o.node is None),
                sum(o.gpus for j in waiting for o in outcomes[j] if o.node is not None),
            )
            done += 1
            if progress is not None:
                progress(done, done + len(events))
        for i, job in enumerate(self.jobs):
            self.result.pods.extend(outcomes[i])
            times = [o.placed_at for o in outcomes[i] if o.placed_at is not None]
            start = max(times) if len(times) == len(outcomes[i]) else None
            kind = "training" if job.kind == "training" else "batch" if job.duration is not None else "service"
            end = None if start is None or job.duration is None else start + job.duration
            self.result.jobs.append(JobOutcome(job.name, kind, job.arrive, len(job.pods), start, end))
            if i in gangs:
                gang = gangs[i]
                placed = [o for o in outcomes[i] if o.node is not None]
                gang.placed = len(placed)
                gang.whole = gang.placed == gang.members
                racks = {rack_of(self.snapshot.nodes[self.snapshot.index[o.node]]) for o in placed if o.node}
                gang.racks = len(racks)
                if placed and not gang.span:
                    gang.span = tier_span(self.snapshot, [self.snapshot.index[o.node] for o in placed if o.node])
                starts = [o.placed_at for o in placed if o.placed_at is not None]
                gang.waited_s = (max(starts) - job.arrive) if gang.whole and starts else None
                self.result.gangs.append(gang)
        return self.result

    def _attempt(
        self,
        i: int,
        outcomes: list[PodOutcome],
        gang: GangOutcome | None,
        t: float,
        events: list[tuple[float, int, int, str]],
    ) -> bool:
        """Place what is still unplaced of job i; True once all of it is placed."""
        job = self.jobs[i]
        if job.kind == "training" and self.gang_aware:
            ok = self._try_gang(job, outcomes, gang or GangOutcome(job.name, len(job.pods)), t)
        else:
            ok = True
            for pod, outcome in zip(job.pods, outcomes, strict=True):
                if outcome.node is None and not self._try_pod(pod, outcome, t):
                    ok = False
        if ok and job.duration is not None:
            heapq.heappush(events, (t + job.duration, 0, i, "depart"))
        return ok


def workload_typical_pods(running: Sequence[PodRequest], jobs: Sequence[Job]) -> tuple[TypicalPod, ...]:
    """The fragmentation plugins' typical pods: the shapes of every pod the scenario runs."""
    return typical_pods(shape_of(p) for p in [*running, *(pod for job in jobs for pod in job.pods)])


def tier_span(snapshot: ClusterSnapshot, nodes: Sequence[int]) -> str:
    """The innermost topology tier that holds all of `nodes` ("node", "rack", ...; else "cluster")."""
    for level in range(len(snapshot.tier_keys) - 1, -1, -1):
        if len({int(snapshot.tier_ids[n, level]) for n in nodes}) == 1:
            return tier_name(snapshot.tier_keys[level])
    return "cluster"


def _first_reason(decision: Decision) -> str:
    """The most common reason nodes were turned away, with numbers left in (as the extender says it)."""
    counts = _count(decision.reasons.values())
    return next(iter(counts), "no node")


def compare(
    scenario: Mapping[str, Any],
    names: Sequence[str],
    weights: Mapping[str, float] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[PolicyResult]:
    results = []
    for name in names:
        replay = Replay.from_scenario(scenario, name, weights if policies.canonical(name) == "gpusched" else None)
        results.append(replay.run(None if progress is None else partial(progress, name)))
    return results
