"""The leader elector against a real kube-apiserver: creation, renewal, expiry by the candidate's own
clock, takeover, release, the resourceVersion precondition, and two electors running as threads.

Time is a hand-moved clock except in the last test, so nothing here waits for a Lease to expire."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from localcluster import k8s
from localcluster.cluster import LocalCluster
from scheduler.state.kube import Kube, load_api_client
from scheduler.state.leader import LeaderElector, LeaseRecord, Timing, micro_time

pytestmark = pytest.mark.e2e

NAMESPACE = "default"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """Monotonic seconds and the matching wall time, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now)


@pytest.fixture
def kube(control_plane: LocalCluster) -> Iterator[Kube]:
    api = load_api_client(str(control_plane.kubeconfig_path))
    yield Kube(api)
    api.close()


@pytest.fixture
def lease_name(control_plane: LocalCluster) -> Iterator[str]:
    name = f"leader-e2e-{uuid.uuid4().hex[:8]}"
    yield name
    with control_plane.api_client() as api:
        k8s.request(api, "DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}")


def elector(kube: Kube, name: str, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(
        kube, NAMESPACE, name, identity, f"http://{identity}:8888", Timing(), clock=clock, wall=clock.wall
    )


def read(kube: Kube, name: str) -> LeaseRecord:
    return LeaseRecord.from_lease(kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}"))


def test_create_renew_expire_take_over_and_release(kube: Kube, lease_name: str) -> None:
    clock = Clock()
    a, b = elector(kube, lease_name, "a", clock), elector(kube, lease_name, "b", clock)

    assert a.try_acquire_or_renew() is True  # no Lease yet: a creates it
    created = read(kube, lease_name)
    assert (created.holder, created.transitions, created.lease_duration_s) == ("a", 0, 15)
    assert created.acquire_time == created.renew_time == micro_time(T0)
    assert created.leader_url == "http://a:8888"

    clock.now = 1.0
    assert b.try_acquire_or_renew() is False  # b first sees a's record at 1.0
    assert b.leader() == ("a", "http://a:8888") and not b.is_leader()

    clock.now = 2.0
    assert a.try_acquire_or_renew() is True  # a renewal: renewTime moves, nothing else
    renewed = read(kube, lease_name)
    assert renewed.renew_time == micro_time(T0 + timedelta(seconds=2))
    assert (renewed.acquire_time, renewed.transitions) == (created.acquire_time, 0)

    clock.now = 3.0
    assert b.try_acquire_or_renew() is False  # the record changed at 2.0, so b times from 3.0 now
    clock.now = 11.9
    assert a.is_leader()  # a's last renewal at 2.0: it leads until 2 + 10 = 12
    clock.now = 12.0
    assert not a.is_leader()  # renewDeadline passed without a renewal: a stops at once
    clock.now = 17.9
    assert b.try_acquire_or_renew() is False  # 3 + 15 = 18 > 17.9
    clock.now = 18.0
    assert b.try_acquire_or_renew() is True  # 3 + 15 = 18: expired, b takes over
    taken = read(kube, lease_name)
    assert (taken.holder, taken.transitions, taken.leader_url) == ("b", 1, "http://b:8888")
    assert taken.acquire_time == micro_time(T0 + timedelta(seconds=18))

    assert a.try_acquire_or_renew() is False  # a finds b's name on it
    assert a.leader() == ("b", "http://b:8888")

    assert b.release() is True
    released = read(kube, lease_name)
    assert (released.holder, released.lease_duration_s, released.transitions) == ("", 1, 1)
    assert not b.is_leader()
    assert a.try_acquire_or_renew() is True  # free: a takes it without waiting
    assert (read(kube, lease_name).holder, read(kube, lease_name).transitions) == ("a", 2)


def test_a_write_since_the_last_read_is_refused(kube: Kube, lease_name: str) -> None:
    """Updates carry the resourceVersion read: someone else's write in between makes ours fail."""
    clock = Clock()
    a = elector(kube, lease_name, "a", clock)
    assert a.try_acquire_or_renew() is True
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{lease_name}"
    kube.patch(path, {"metadata": {"labels": {"touched": "yes"}}}, "application/merge-patch+json")
    assert a.release() is False  # 409 Conflict: the Lease still names a
    assert read(kube, lease_name).holder == "a"


def test_two_electors_hand_over_when_the_leader_stops(kube: Kube, lease_name: str) -> None:
    """Real clocks, short timing: exactly one leads; when it stops (releasing), the other leads."""
    timing = Timing(lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.2)
    electors = [LeaderElector(kube, NAMESPACE, lease_name, name, f"http://{name}:1", timing) for name in ("a", "b")]
    for e in electors:
        e.start()
    try:
        first = k8s.wait_until(lambda: next((e for e in electors if e.is_leader()), None), timeout=30, what="a leader")
        (other,) = [e for e in electors if e is not first]
        k8s.wait_until(lambda: other.leader(), timeout=30, what="the standby to see the leader")
        assert other.leader() == (first.identity, first.leader_url) and not other.is_leader()
        first.stop(release=True)
        k8s.wait_until(lambda: other.is_leader() or None, timeout=30, what="the standby to take over")
        assert read(kube, lease_name).holder == other.identity
        assert not first.is_leader()
    finally:
        for e in electors:
            e.stop(release=False)


def test_a_leader_whose_view_is_not_current_steps_down(kube: Kube, lease_name: str) -> None:
    """can_lead() false (informers stale) on the leader: it releases, the other takes over, and it
    says so (on_change(False)) rather than waiting for the Lease to run out."""
    timing = Timing(lease_duration_s=60.0, renew_deadline_s=40.0, retry_period_s=0.2)  # expiry is not the path
    current = {"a": True, "b": True}
    changes: list[tuple[str, bool]] = []

    def elector_named(name: str) -> LeaderElector:
        def can_lead() -> bool:
            return current[name]

        def on_change(leading: bool) -> None:
            changes.append((name, leading))

        return LeaderElector(
            kube, NAMESPACE, lease_name, name, f"http://{name}:1", timing, can_lead=can_lead, on_change=on_change
        )

    electors = [elector_named("a"), elector_named("b")]
    for e in electors:
        e.start()
    try:
        first = k8s.wait_until(lambda: next((e for e in electors if e.is_leader()), None), timeout=30, what="a leader")
        (other,) = [e for e in electors if e is not first]
        current[first.identity] = False
        k8s.wait_until(lambda: other.is_leader() or None, timeout=30, what="the other to take over")
        assert not first.is_leader()
        assert (first.identity, False) in changes and changes[-1] == (other.identity, True)
    finally:
        for e in electors:
            e.stop(release=False)
