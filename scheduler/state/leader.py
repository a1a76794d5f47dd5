"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's `leaderelection` runs it
for kube-scheduler, so that one extender replica answers the verbs and the others stand by warm.

Timing (kube-scheduler's defaults): leaseDuration 15 s, renewDeadline 10 s, retryPeriod 2 s.

- A candidate tries every retryPeriod (times 1..2.2, client-go's jitter of 1.2). It takes the
  Lease when it has no holder, or when the record it last read has not changed for the record's
  leaseDurationSeconds, timed by this process's clock from when it saw that record first. A
  renewTime is never compared with the local clock: machines' clocks differ.
- Every write is an update that carries the resourceVersion read, so of two candidates the API
  server accepts one and answers 409 Conflict to the other. A new holder increments
  leaseTransitions and sets acquireTime; a renewal keeps both and moves renewTime.
- The holder renews every retryPeriod. It leads until renewDeadline after its last successful
  renewal, judged on every `is_leader()` call, so a renewal stuck on a slow API server loses
  leadership on time. Since renewDeadline < leaseDuration, it has stopped before a standby can
  take over. A renewal that finds another holder loses leadership at once.
- `release()` (on shutdown) writes an empty holder with leaseDurationSeconds 1, as client-go's
  ReleaseOnCancel does, so a standby takes over within one retryPeriod instead of leaseDuration.
  A leader whose `can_lead()` turns false (its informers' view is no longer current) releases
  the Lease the same way.

The leader's address for forwarded verbs travels in the Lease's annotation `gpusched.io/leader-url`.
The decisions (`observe`, `may_take`, `record_for`) are pure functions of the record, the clocks
and the identity; `LeaderElector` adds the API calls and the loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from scheduler.state.kube import Kube, KubeError

log = logging.getLogger("gpusched.leader")

LEADER_URL_ANNOTATION = "gpusched.io/leader-url"
JITTER = 1.2  # client-go's JitterFactor for the acquire loop


@dataclass(frozen=True)
class Timing:
    """client-go's and kube-scheduler's defaults; renew_deadline must be below lease_duration."""

    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs 0 < retryPeriod < renewDeadline < leaseDuration, got "
                f"{self.retry_period_s} / {self.renew_deadline_s} / {self.lease_duration_s} s"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that leader election reads and writes."""

    holder: str = ""
    lease_duration_s: int = 15
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0
    leader_url: str = ""
    resource_version: str = ""  # not part of the record's content: it changes with every write

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            leader_url=str((meta.get("annotations") or {}).get(LEADER_URL_ANNOTATION, "")),
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def content(self) -> LeaseRecord:
        return replace(self, resource_version="")

    def lease_body(self, name: str, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {LEADER_URL_ANNOTATION: self.leader_url},
                **({"resourceVersion": self.resource_version} if self.resource_version else {}),
            },
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": self.lease_duration_s,
                # null, not "": the API server cannot parse an empty MicroTime
                "acquireTime": self.acquire_time or None,
                "renewTime": self.renew_time or None,
                "leaseTransitions": self.transitions,
            },
        }


@dataclass(frozen=True)
class Observation:
    """The record last read and when (this process's monotonic clock) its content last changed."""

    record: LeaseRecord
    since: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The same content keeps its first sighting time; new content starts the clock again."""
    if previous is not None and previous.record.content() == record.content():
        return Observation(record, previous.since)
    return Observation(record, now)


def may_take(seen: Observation, identity: str, now: float) -> bool:
    """True when the Lease is free, ours, or unchanged for its own leaseDurationSeconds."""
    holder = seen.record.holder
    return not holder or holder == identity or now >= seen.since + seen.record.lease_duration_s


def record_for(current: LeaseRecord | None, identity: str, leader_url: str, wall: str, timing: Timing) -> LeaseRecord:
    """What to write to take or renew the Lease: a renewal keeps acquireTime and leaseTransitions,
    a new holder sets acquireTime and counts one more transition (none on creation)."""
    duration = round(timing.lease_duration_s)
    if current is None:
        return LeaseRecord(identity, duration, wall, wall, 0, leader_url)
    if current.holder == identity:
        return replace(current, lease_duration_s=duration, renew_time=wall, leader_url=leader_url)
    return replace(
        current,
        holder=identity,
        lease_duration_s=duration,
        acquire_time=wall,
        renew_time=wall,
        transitions=current.transitions + 1,
        leader_url=leader_url,
    )


def micro_time(now: datetime) -> str:
    """A MicroTime as the API server writes it: RFC 3339, microseconds, UTC."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector(threading.Thread):
    """Campaigns for the Lease `namespace/name` while `can_lead()` holds (informers synced), and
    renews it while leading. `clock` is monotonic seconds, `wall` the time written into the Lease;
    both are injectable for tests, as are `sleep` (wait on the stop event by default) and `rand`."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        leader_url: str = "",
        timing: Timing = Timing(),
        can_lead: Callable[[], bool] = lambda: True,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(name="leader-elector", daemon=True)
        if not identity:
            raise ValueError("leader election needs an identity (the pod name)")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.leader_url = leader_url
        self.timing = timing
        self.can_lead = can_lead
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self.rand = rand
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._seen: Observation | None = None
        self._renewed_at: float | None = None  # last successful write while leading; None: not leading

    # -- what the rest of the process reads -------------------------------------------------

    def is_leader(self) -> bool:
        """Leading, and the last renewal is less than renewDeadline old (by this process's clock)."""
        with self._lock:
            return self._renewed_at is not None and self.clock() < self._renewed_at + self.timing.renew_deadline_s

    def leader(self) -> tuple[str, str] | None:
        """(identity, url) of the current leader as last read, or None when none holds a live Lease."""
        with self._lock:
            seen = self._seen
            if seen is None or not seen.record.holder:
                return None
            if self.clock() >= seen.since + seen.record.lease_duration_s:
                return None
            return seen.record.holder, seen.record.leader_url

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping.is_set():
            if self.can_lead():
                self.try_acquire_or_renew()
            elif self._renewed_at is not None:
                log.warning("stepping down: this replica's view of the cluster is not current")
                self.release()  # a standby whose view is current takes over within its retry period
            if self._renewed_at is not None and not self.is_leader():
                self._lost(f"not renewed within {self.timing.renew_deadline_s:g} s")
            leading = self._renewed_at is not None
            pause = self.timing.retry_period_s
            if not leading:
                pause *= 1 + JITTER * self.rand()
            self.stopping.wait(pause)

    def stop(self, release: bool = True, wait_s: float = 5.0) -> None:
        """Stop campaigning; with `release`, after the round in flight, give the Lease up."""
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(wait_s)
        if release:
            self.release()

    def try_acquire_or_renew(self) -> bool:
        """One round: read, decide, write. Returns whether this replica leads afterwards."""
        now = self.clock()
        try:
            lease = self.kube.get(self.path)
        except KubeError as exc:
            if exc.status != 404:
                return self._failed(f"read Lease {self.namespace}/{self.name}: {exc}")
            lease = None
        if lease is None:
            record = record_for(None, self.identity, self.leader_url, micro_time(self.wall()), self.timing)
            try:
                written = self.kube.post(
                    f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases",
                    record.lease_body(self.name, self.namespace),
                )
            except KubeError as exc:
                return self._failed(f"create Lease {self.namespace}/{self.name}: {exc}")
            return self._won(LeaseRecord.from_lease(written), now)
        current = LeaseRecord.from_lease(lease)
        with self._lock:
            self._seen = observe(self._seen, current, now)
            seen = self._seen
        if not may_take(seen, self.identity, now):
            return self._lost(f"held by {current.holder}")
        record = record_for(current, self.identity, self.leader_url, micro_time(self.wall()), self.timing)
        try:
            # A merge patch that names the resourceVersion is an update with a precondition:
            # the API server refuses it with 409 if anyone wrote the Lease since we read it.
            written = self.kube.patch(
                self.path, record.lease_body(self.name, self.namespace), "application/merge-patch+json"
            )
        except KubeError as exc:
            return self._failed(f"update Lease {self.namespace}/{self.name}: {exc}")
        return self._won(LeaseRecord.from_lease(written), now)

    def release(self) -> bool:
        """Give the Lease up if this replica holds it: empty holder, leaseDurationSeconds 1."""
        with self._lock:
            seen = self._seen
            leading = self._renewed_at is not None
            self._renewed_at = None
        if not leading or seen is None:
            return False
        wall = micro_time(self.wall())
        record = replace(seen.record, holder="", lease_duration_s=1, acquire_time=wall, renew_time=wall, leader_url="")
        try:
            self.kube.patch(self.path, record.lease_body(self.name, self.namespace), "application/merge-patch+json")
        except KubeError as exc:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
            return False
        finally:
            self.on_change(False)
        log.info("released Lease %s/%s", self.namespace, self.name)
        return True

    # -- outcomes -------------------------------------------------------------------------

    def _won(self, record: LeaseRecord, now: float) -> bool:
        with self._lock:
            self._seen = Observation(record, now)
            was_leading = self._renewed_at is not None
            self._renewed_at = now
        if not was_leading:
            log.info(
                "leading: Lease %s/%s acquired by %s (transition %d)",
                self.namespace,
                self.name,
                self.identity,
                record.transitions,
            )
            self.on_change(True)
        return True

    def _lost(self, why: str) -> bool:
        with self._lock:
            was_leading = self._renewed_at is not None
            self._renewed_at = None
        if was_leading:
            log.warning("stopped leading: Lease %s/%s %s", self.namespace, self.name, why)
            self.on_change(False)
        return False

    def _failed(self, why: str) -> bool:
        """A read or write that failed: keep leading until renewDeadline, then let go."""
        log.info("leader election: %s", why)
        if self._renewed_at is not None and not self.is_leader():
            return self._lost(f"not renewed within {self.timing.renew_deadline_s:g} s")
        return self.is_leader()
