"""The capacity question: the smallest set of added nodes that lets every pod and gang of a
scenario's workload start within T seconds of arriving (`gpusched-sim whatif SCENARIO --need`).

Each candidate is the scenario with `n_k` nodes of each node type k added (`apply_changes`, as
`--add-nodes` does), replayed under one policy by the same `Replay` the what-if runs. A job is late
when it starts more than T seconds after it arrives, or never: an inference replica or batch pod
when it is placed, a gang when its last member is. The search, in whole replays:

1. Without added nodes: nothing late, nothing needed.
2. Grow: from the current set, for each node type the smallest step s in 1, 2, 4, ... (up to
   `max_nodes` added in all) that makes the workload less late, lateness being (pods late, the
   seconds by which they are late; never-placed pods count from arrival to the end of the replay),
   compared in that order. Take the step that removes the most late pods per GPU added (then the
   most late seconds per GPU); repeat until nothing is late. No step helps: the answer is that no
   set within `max_nodes` does, with what is still late and why.
3. Trim: for each type, the fewest of its nodes (binary search) that still leave nothing late,
   the other types held; largest GPU count per node first.

Cost is the number of GPUs added (ties: fewer nodes). A replay is deterministic, so each set is
replayed once. The answer is the smallest found, not a proof of the minimum: lateness is not
monotone in every case (a node added elsewhere can change where an earlier pod went).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.core.scenario import ScenarioError
from simulations.whatif import PolicyResult, Replay, apply_changes

MAX_NODES = 64


@dataclass(frozen=True)
class Lateness:
    pods: int  # pods that started more than T seconds after arriving, or never
    seconds: float  # by how much, summed
    late_jobs: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[int, float]:
        return (self.pods, self.seconds)


@dataclass
class Need:
    within_s: float
    policy: str
    added: dict[str, int]  # node type -> nodes added
    gpus: int  # GPUs added
    found: bool  # False: no set within the limit lets everything start in time
    late: Lateness
    replays: int
    result: PolicyResult | None = None
    tried: list[tuple[dict[str, int], int, float]] = field(default_factory=list)  # set, late pods, late seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "within_s": self.within_s,
            "policy": self.policy,
            "found": self.found,
            "added_nodes": self.added,
            "added_gpus": self.gpus,
            "late_pods": self.late.pods,
            "late_seconds": round(self.late.seconds, 1),
            "late_jobs": list(self.late.late_jobs),
            "late_reasons": list(self.late.reasons),
            "replays": self.replays,
        }


def lateness(result: PolicyResult, within_s: float) -> Lateness:
    """Pods of jobs that did not start within `within_s` of arriving, and by how many seconds."""
    end = result.end()
    by_job: dict[str, list[Any]] = {}
    for pod in result.pods:
        by_job.setdefault(pod.job, []).append(pod)
    pods = 0
    seconds = 0.0
    jobs: list[str] = []
    reasons: dict[str, None] = {}
    for job in result.jobs:
        members = by_job.get(job.name, [])
        start = job.start if job.start is not None else max(end, job.arrive) + within_s + 1.0
        if start - job.arrive > within_s:
            pods += job.pods
            seconds += (start - job.arrive - within_s) * job.pods
            jobs.append(job.name)
            reasons.update((p.reason, None) for p in members if p.reason)
    return Lateness(pods, seconds, tuple(jobs), tuple(reasons))


def node_type_gpus(scenario: Mapping[str, Any]) -> dict[str, int]:
    types = scenario.get("nodeTypes") or {}
    if not types:
        raise ScenarioError("--need: the scenario has no nodeTypes to add nodes of")
    return {str(name): int((spec or {}).get("gpus", 0)) for name, spec in types.items()}


def find_need(
    scenario: Mapping[str, Any],
    within_s: float,
    policy: str = "gpusched",
    weights: Mapping[str, float] | None = None,
    max_nodes: int = MAX_NODES,
    progress: Callable[[dict[str, int], Lateness], None] | None = None,
) -> Need:
    """The search of the module docstring."""
    if within_s < 0:
        raise ScenarioError("--within must not be negative")
    gpus_of = node_type_gpus(scenario)
    seen: dict[tuple[int, ...], tuple[Lateness, PolicyResult]] = {}
    names = list(gpus_of)

    def run(counts: dict[str, int]) -> tuple[Lateness, PolicyResult]:
        key = tuple(counts.get(n, 0) for n in names)
        if key not in seen:
            added = {n: c for n, c in counts.items() if c > 0}
            result = Replay.from_scenario(apply_changes(scenario, added), policy, weights).run()
            seen[key] = (lateness(result, within_s), result)
            if progress is not None:
                progress(added, seen[key][0])
        return seen[key]

    def cost(counts: Mapping[str, int]) -> int:
        return sum(gpus_of[n] * c for n, c in counts.items())

    counts = {n: 0 for n in names}
    late, _ = run(counts)
    while late.pods:
        best: tuple[tuple[float, float], dict[str, int], Lateness] | None = None
        for name in names:
            if gpus_of[name] <= 0:
                continue
            step = 1
            while sum(counts.values()) + step <= max_nodes:
                trial = {**counts, name: counts[name] + step}
                trial_late, _ = run(trial)
                if trial_late.key < late.key:
                    added = gpus_of[name] * step
                    gain = ((late.pods - trial_late.pods) / added, (late.seconds - trial_late.seconds) / added)
                    if best is None or gain > best[0]:
                        best = (gain, trial, trial_late)
                    break
                step *= 2
        if best is None:
            break
        counts, late = best[1], best[2]
    found = late.pods == 0
    if found:
        for name in sorted(names, key=lambda n: -gpus_of[n]):
            lo, hi = 0, counts[name]  # hi keeps everything in time; find the fewest that do
            while lo < hi:
                mid = (lo + hi) // 2
                if run({**counts, name: mid})[0].pods == 0:
                    hi = mid
                else:
                    lo = mid + 1
            counts[name] = hi
    late, result = run(counts)
    answer = {n: c for n, c in counts.items() if c > 0}
    tried = [
        ({n: c for n, c in zip(names, key, strict=True) if c}, lt.pods, lt.seconds) for key, (lt, _) in seen.items()
    ]
    return Need(within_s, policy, answer, cost(answer), found, late, len(seen), result, tried)
