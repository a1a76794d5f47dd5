"""Gangs under churn on the real control plane: seeded random arrivals and finishes of gangs and
plain pods at mixed priorities, while the extender is killed with SIGKILL and restarted and
kube-scheduler is restarted. Checked from the API every POLL_S seconds throughout:

- no gang stays partly bound for more than PARTIAL_BOUND_S once the extender and kube-scheduler
  are both back (a restarted extender completes a gang whose binding was under way);
- no GPU is over-committed: per node, the bound pods' nvidia.com/gpu sum to at most 8 and their
  gpusched.io/gpu-ids are disjoint, within 0..7, one per GPU asked;
- no deadlock: every gang (each fits the empty cluster) is bound whole and finishes, and so does
  every plain pod that kube-scheduler did not preempt.

CI runs the SHORT soak. GPUSCHED_SOAK_LONG=1 runs the LONG one (4x the gangs and pods over a
longer window, more kills and restarts); GPUSCHED_SOAK_SEED=N replays a seed (CI's default is
fixed, the long soak draws a fresh one). The seed and the counts are printed (pytest -s).
"""

from __future__ import annotations

import os
import random
import ssl
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from localcluster import k8s
from scheduler.core.scenario import pod_object
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

LEAF = "network.topology.nvidia.com/leaf"
# Reports are written once and never renewed here: a TTL beyond the soak keeps nodes fresh.
CONFIG = {"topologyTiers": [LEAF, "kubernetes.io/hostname"], "reportTTLSeconds": 3600}
RACKS, NODES_PER_RACK, GPUS_PER_NODE = 4, 8, 8
POLL_S = 0.5
PARTIAL_BOUND_S = 30.0  # longest a gang may stay partly bound once the extender and scheduler are back
GROUP = "scheduling.x-k8s.io/pod-group"
GPU_IDS = "gpusched.io/gpu-ids"
MID_BIND_WAIT_S = 30.0  # how long a mid-bind kill waits for a gang being bound before killing anyway
DEFAULT_SEED = 20261130

# Gangs run at mid or high priority, plain pods at low or mid. Mid preempts only low (plain pods);
# high only jumps the queue (preemptionPolicy Never), so no gang member is ever a victim and every
# gang can be expected to finish.
PRIORITY_CLASSES = {
    "gang-soak-low": (0, "PreemptLowerPriority"),
    "gang-soak-mid": (100, "PreemptLowerPriority"),
    "gang-soak-high": (1000, "Never"),
}
GANG_CLASSES = ("gang-soak-mid", "gang-soak-high")
PLAIN_CLASSES = ("gang-soak-low", "gang-soak-mid")


@dataclass(frozen=True)
class Soak:
    gangs: int
    plain: int
    window_s: float  # arrivals and disruptions fall in [0, window_s]
    kills: int  # at random moments
    kills_mid_bind: int  # as soon as a Binding leaves a gang partly bound (after MID_BIND_WAIT_S at the latest)
    scheduler_restarts: int
    drain_s: float  # after the window, how long everything has to finish


SHORT = Soak(gangs=16, plain=32, window_s=60.0, kills=3, kills_mid_bind=1, scheduler_restarts=1, drain_s=120.0)
LONG = Soak(gangs=64, plain=128, window_s=240.0, kills=8, kills_mid_bind=4, scheduler_restarts=3, drain_s=300.0)


@dataclass
class Job:
    """A gang or a plain pod, and what the soak saw of it."""

    gang: bool
    name: str
    pods: tuple[str, ...]
    gpus: int  # per pod
    priority_class: str
    arrive_at: float
    lifetime_s: float  # from bound whole to deleted
    created: bool = False
    whole_at: float | None = None
    partial_since: float | None = None
    deleting: bool = False
    finished: bool = False
    preempted: bool = False


def jobs(rng: random.Random, soak: Soak) -> list[Job]:
    """Gangs of 2..6 members x 8, 4 or 2 GPUs (at most 6 x 8 = 48 GPUs: within one rack of 64,
    so each fits the empty cluster) and plain pods of 1..8 GPUs, arriving uniformly in the window."""
    out = []
    for g in range(soak.gangs):
        size, gpus = rng.randint(2, 6), rng.choice((8, 4, 2))
        assert size * gpus <= NODES_PER_RACK * GPUS_PER_NODE
        name = f"soak-g{g:02d}"
        out.append(
            Job(
                True,
                name,
                tuple(f"{name}-{rank}" for rank in range(size)),
                gpus,
                rng.choice(GANG_CLASSES),
                rng.uniform(0, soak.window_s),
                rng.uniform(5, 20),
            )
        )
    for p in range(soak.plain):
        name = f"soak-p{p:02d}"
        arrive = rng.uniform(0, soak.window_s)
        out.append(Job(False, name, (name,), rng.randint(1, 8), rng.choice(PLAIN_CLASSES), arrive, rng.uniform(5, 20)))
    return out


def create(env: Env, job: Job) -> None:
    spec = {"priorityClassName": job.priority_class, "terminationGracePeriodSeconds": 0}
    for rank, name in enumerate(job.pods):
        entry: dict[str, Any] = {"name": name, "gpus": job.gpus}
        if job.gang:
            entry["annotations"] = {"gpusched.io/min-member": str(len(job.pods))}
            entry["labels"] = {GROUP: job.name, "batch.kubernetes.io/job-completion-index": str(rank)}
        obj = pod_object(entry)
        obj["spec"].pop("nodeName", None)
        obj["spec"].update(spec)
        k8s.request(env.api, "POST", "/api/v1/namespaces/default/pods", obj)


def gpu_ids(pod: Mapping[str, Any]) -> list[int] | None:
    raw = (pod["metadata"].get("annotations") or {}).get(GPU_IDS)
    try:
        return [int(i) for i in raw.split(",")] if raw else None
    except ValueError:
        return None


def requested_gpus(pod: Mapping[str, Any]) -> int:
    return sum(int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["spec"]["containers"])


def overcommits(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each node where the bound pods ask more than its GPUs, share a GPU id, or carry ids that are
    missing, out of range or not one per GPU asked."""
    by_node: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for pod in pods:
        if pod["spec"].get("nodeName"):
            by_node[pod["spec"]["nodeName"]].append(pod)
    problems = []
    for node, bound in sorted(by_node.items()):
        asked = sum(requested_gpus(p) for p in bound)
        if asked > GPUS_PER_NODE:
            problems.append(f"{node}: {asked} GPUs bound > {GPUS_PER_NODE}")
        holders: dict[int, str] = {}
        for pod in bound:
            name, ids = pod["metadata"]["name"], gpu_ids(pod)
            if ids is None or len(ids) != requested_gpus(pod) or not all(0 <= i < GPUS_PER_NODE for i in ids):
                problems.append(f"{node}: {name} has {GPU_IDS}={ids} for {requested_gpus(pod)} GPUs")
                continue
            for i in ids:
                if i in holders:
                    problems.append(f"{node}: GPU {i} given to {holders[i]} and {name}")
                holders[i] = name
    return problems


class Disruptions:
    """Extender kills (SIGKILL, restarted after 0..3 s) and kube-scheduler restarts at random times,
    one at a time in a thread. A mid-bind kill watches gang members from its time on (for at most
    MID_BIND_WAIT_S) and kills as soon as a gang has some members bound but not all: the extender
    dies while it creates a gang's Bindings, and the restarted one has a gang to complete.
    `down`/`back_at` say whether either is away and since when both are back (soak seconds).

    The thread outlives its plan until `over` is set: localcluster starts kube-scheduler with
    PR_SET_PDEATHSIG, which fires when the starting thread ends, so a scheduler restarted here
    would otherwise be killed with the thread."""

    def __init__(self, env: Env, rng: random.Random, soak: Soak, clock: Callable[[], float]) -> None:
        plan = [(rng.uniform(2, soak.window_s), "kill") for _ in range(soak.kills)]
        plan += [(rng.uniform(2, soak.window_s), "kill mid-bind") for _ in range(soak.kills_mid_bind)]
        plan += [(rng.uniform(2, soak.window_s), "scheduler restart") for _ in range(soak.scheduler_restarts)]
        self.plan = sorted(plan)
        self.env, self.rng, self.clock = env, rng, clock
        self.lock = threading.Lock()
        self.down, self.back_at = False, 0.0
        self.kills = self.kills_mid_bind = self.scheduler_restarts = 0
        self.failure: BaseException | None = None
        self.finished = False
        self.over = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for at, what in self.plan:
                time.sleep(max(0.0, at - self.clock()))
                hit = what == "kill mid-bind" and self.await_partial_gang(self.clock() + MID_BIND_WAIT_S)
                with self.lock:
                    self.down = True
                if what.startswith("kill"):
                    self.env.extender.kill()
                    time.sleep(self.rng.uniform(0, 3))
                    self.env.extender.start(timeout=120)
                    self.kills += 1
                    self.kills_mid_bind += bool(hit)
                else:
                    self.env.cluster.restart_scheduler()
                    self.scheduler_restarts += 1
                print(f"[{self.clock():6.1f}s] {what}{' (a gang was partly bound)' if hit else ''} done")
                with self.lock:
                    self.down, self.back_at = False, self.clock()
        except BaseException as exc:  # reported by the test, which stops at once
            self.failure = exc
        self.finished = True
        self.over.wait()

    def await_partial_gang(self, until: float) -> bool:
        """Watch gang members until a bind leaves a gang with some members bound but not all (True),
        or until `until` on the soak's clock (False)."""
        path, selector = "/api/v1/namespaces/default/pods", {"labelSelector": GROUP}
        with self.env.cluster.api_client() as api:
            listed = k8s.request(api, "GET", path, query=selector)
            bound: dict[str, set[str]] = defaultdict(set)
            for pod in listed["items"]:
                if pod["spec"].get("nodeName"):
                    bound[pod["metadata"]["labels"][GROUP]].add(pod["metadata"]["name"])
            query = {**selector, "resourceVersion": listed["metadata"]["resourceVersion"]}
            while (left := until - self.clock()) > 0:
                for event in k8s.watch(api, path, query=query, timeout=left):
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        return False  # the watch expired (410): kill now all the same
                    meta = event["object"]["metadata"]
                    query["resourceVersion"] = meta["resourceVersion"]
                    members = bound[meta["labels"][GROUP]]
                    if event["type"] == "DELETED":
                        members.discard(meta["name"])
                    elif event["object"]["spec"].get("nodeName") and meta["name"] not in members:
                        members.add(meta["name"])
                        if len(members) < int(meta["annotations"]["gpusched.io/min-member"]):
                            return True
        return False

    def state(self) -> tuple[bool, float]:
        with self.lock:
            return self.down, self.back_at


def ensure_priority_classes(env: Env) -> None:
    for name, (value, policy) in PRIORITY_CLASSES.items():
        body = {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "preemptionPolicy": policy,
        }
        try:
            k8s.request(env.api, "POST", "/apis/scheduling.k8s.io/v1/priorityclasses", body)
        except ApiException as exc:
            if exc.status != 409:  # made by an earlier run against this control plane
                raise


def scheduler_queues(env: Env) -> str:
    """kube-scheduler's alive flag and its pending-pod gauges per queue (active, backoff, unschedulable, gated)."""
    request = urllib.request.Request(f"https://127.0.0.1:{env.cluster.scheduler_port}/metrics")
    request.add_header("Authorization", f"Bearer {env.cluster.admin_token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=ssl._create_unverified_context()) as resp:
            lines = resp.read().decode().splitlines()
    except OSError as exc:
        lines = [f"metrics unreadable: {exc}"]
    pending = [line for line in lines if line.startswith(("scheduler_pending_pods", "metrics unreadable"))]
    return f"kube-scheduler running: {env.cluster.scheduler_running}; " + "; ".join(pending)


def log_lines(env: Env, needle: str, most: int = 15) -> str:
    lines = [line for line in env.extender.log_path.read_text(errors="replace").splitlines() if needle in line]
    return "\n".join(lines[-most:])


@pytest.mark.gpusched_config(CONFIG)
def test_gangs_stay_whole_and_gpus_single_booked_through_kills_and_restarts(gpusched: Env) -> None:
    env = gpusched
    long = os.environ.get("GPUSCHED_SOAK_LONG") == "1"
    soak = LONG if long else SHORT
    fresh = random.SystemRandom().randrange(10**9) if long else DEFAULT_SEED
    seed = int(os.environ.get("GPUSCHED_SOAK_SEED") or fresh)
    print(f"gang soak: {'long' if long else 'short'}, seed {seed} (GPUSCHED_SOAK_SEED={seed} replays it)")
    rng = random.Random(seed)
    ensure_priority_classes(env)
    for r in range(RACKS):
        for i in range(NODES_PER_RACK):
            env.node(f"r{r}-n{i}", GPUS_PER_NODE, labels={LEAF: f"rack-{r}"})
    work = jobs(rng, soak)
    by_pod = {pod: job for job in work for pod in job.pods}
    start = time.monotonic()

    def clock() -> float:
        return time.monotonic() - start

    disruptions = Disruptions(env, rng, soak, clock)
    disruptions.thread.start()
    overcommitted: list[str] = []
    longest_partial = longest_partial_after_back = 0.0
    late: list[str] = []  # gangs partly bound past PARTIAL_BOUND_S after the services were back
    deadline = soak.window_s + soak.drain_s
    while True:
        now = clock()
        scheduler_running = env.cluster.scheduler_running
        pods = env.pods()
        down, back_at = disruptions.state()  # read after the list: a state the list may show
        if not (scheduler_running or down or back_at >= now):  # not within a restart: it died
            raise AssertionError(f"kube-scheduler exited: {scheduler_queues(env)}")
        for problem in overcommits(pods):
            if problem not in overcommitted:
                overcommitted.append(problem)
                print(f"[{now:6.1f}s] over-commit: {problem}")
        present: dict[str, dict[str, Any]] = {p["metadata"]["name"]: p for p in pods if p["metadata"]["name"] in by_pod}
        for job in work:
            if not job.created or job.finished:
                continue
            alive = [present[name] for name in job.pods if name in present]
            bound = [p for p in alive if p["spec"].get("nodeName")]
            if job.deleting:
                job.finished = not alive
                continue
            if len(alive) < len(job.pods):  # gone without our delete: only plain pods are victims
                assert not job.gang, f"gang {job.name} lost members {set(job.pods) - set(present)}"
                job.preempted = job.finished = True
                continue
            if len(bound) == len(job.pods):
                if job.whole_at is None:
                    job.whole_at = now
                job.partial_since = None
            elif bound:
                job.partial_since = job.partial_since if job.partial_since is not None else now
                longest_partial = max(longest_partial, now - job.partial_since)
                if not down:
                    after_back = now - max(job.partial_since, back_at)
                    longest_partial_after_back = max(longest_partial_after_back, after_back)
                    if after_back > PARTIAL_BOUND_S and job.name not in late:
                        nodes = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in alive}
                        late.append(f"{job.name} partly bound {after_back:.1f}s after back: {nodes}")
                        print(f"[{now:6.1f}s] {late[-1]}\n{log_lines(env, job.name)}")
            if job.whole_at is not None and now >= job.whole_at + job.lifetime_s:
                job.deleting = True  # before the deletes: a later list showing part of it is ours
                for name in job.pods:
                    k8s.request(
                        env.api,
                        "DELETE",
                        f"/api/v1/namespaces/default/pods/{name}",
                        query={"gracePeriodSeconds": "0"},
                    )
        for job in work:
            if not job.created and now >= job.arrive_at:
                create(env, job)
                job.created = True
        if disruptions.failure is not None:
            raise disruptions.failure
        done = all(job.finished for job in work) and disruptions.finished
        if done or late or now > deadline:
            break
        time.sleep(max(0.0, POLL_S - (clock() - now)))
    elapsed = clock()

    gangs = [job for job in work if job.gang]
    plain = [job for job in work if not job.gang]
    unfinished = [job for job in gangs if not job.finished]
    plain_unfinished = [job for job in plain if not job.finished]
    print(
        f"gang soak, seed {seed}, {elapsed:.0f}s: gangs created {sum(j.created for j in gangs)}, "
        f"bound whole {sum(j.whole_at is not None for j in gangs)}, finished {sum(j.finished for j in gangs)}; "
        f"members {sum(len(j.pods) for j in gangs)}; plain pods {len(plain)} "
        f"(preempted {sum(j.preempted for j in plain)}, not finished {len(plain_unfinished)}); "
        f"extender kills {disruptions.kills} ({disruptions.kills_mid_bind} with a gang partly bound), "
        f"scheduler restarts {disruptions.scheduler_restarts}; "
        f"longest partial gang {longest_partial:.1f}s ({longest_partial_after_back:.1f}s after the services were "
        f"back, bound {PARTIAL_BOUND_S:.0f}s); over-commits seen {len(overcommitted)}; deadlocks {len(unfinished)}"
    )
    if unfinished or plain_unfinished:
        print(scheduler_queues(env))
    disruptions.over.set()
    disruptions.thread.join(timeout=60)
    for job in unfinished + plain_unfinished:
        print(f"not finished: {job.name} ({len(job.pods)} x {job.gpus} GPUs, {job.priority_class})")
        for pod in job.pods:
            conditions = env.get_pod(pod).get("status", {}).get("conditions") or []
            print(f"  {pod}: {conditions}")
        print(log_lines(env, job.name))
    assert not overcommitted, overcommitted
    assert not late, late
    assert not unfinished, f"deadlocked gangs (never bound whole and finished): {[j.name for j in unfinished]}"
    assert not plain_unfinished, f"plain pods never bound and finished: {[j.name for j in plain_unfinished]}"
    assert disruptions.kills == soak.kills + soak.kills_mid_bind
    assert disruptions.scheduler_restarts == soak.scheduler_restarts


def bound_pod(name: str, node: str, gpus: int, ids: str | None) -> dict[str, Any]:
    obj = pod_object({"name": name, "gpus": gpus, "node": node})
    if ids is not None:
        obj["metadata"]["annotations"][GPU_IDS] = ids
    return obj


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        # 4 + 4 = 8 GPUs on n0, ids disjoint: nothing to report.
        ([bound_pod("a", "n0", 4, "0,1,2,3"), bound_pod("b", "n0", 4, "4,5,6,7")], []),
        # 6 + 4 = 10 > 8 on n0; b also names GPUs 8 and 9, which n0 does not have.
        (
            [bound_pod("a", "n0", 6, "0,1,2,3,4,5"), bound_pod("b", "n0", 4, "6,7,8,9")],
            ["n0: 10 GPUs bound > 8", "n0: b has gpusched.io/gpu-ids=[6, 7, 8, 9] for 4 GPUs"],
        ),
        # GPU 3 named by both pods on n1; the same ids on another node are no clash.
        (
            [bound_pod("a", "n1", 2, "2,3"), bound_pod("b", "n1", 2, "3,4"), bound_pod("c", "n2", 2, "2,3")],
            ["n1: GPU 3 given to a and b"],
        ),
        # Ids missing, or fewer than the GPUs asked.
        (
            [bound_pod("a", "n0", 2, None), bound_pod("b", "n0", 2, "5")],
            ["n0: a has gpusched.io/gpu-ids=None for 2 GPUs", "n0: b has gpusched.io/gpu-ids=[5] for 2 GPUs"],
        ),
    ],
)
def test_overcommits_names_every_double_booking(pods: list[dict[str, Any]], expected: list[str]) -> None:
    assert overcommits(pods) == expected
