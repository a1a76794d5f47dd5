"""Leader election's pure decisions: what a candidate has seen, when it may take the Lease, and what
it writes (tests/e2e/test_leader_e2e.py runs the elector against a real kube-apiserver)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from scheduler.state.leader import (
    LEADER_URL_ANNOTATION,
    LeaseRecord,
    Observation,
    Timing,
    may_take,
    micro_time,
    observe,
    record_for,
)

HELD = LeaseRecord("a", 15, "t0", "t1", 3, "http://a:8888", resource_version="41")


@pytest.mark.parametrize(
    ("read", "since"),
    [
        (HELD, 100.0),  # unchanged: still timed from the first sighting
        (LeaseRecord("a", 15, "t0", "t1", 3, "http://a:8888", resource_version="42"), 100.0),  # rv only
        (LeaseRecord("a", 15, "t0", "t2", 3, "http://a:8888", resource_version="42"), 130.0),  # renewed
        (LeaseRecord("b", 15, "t2", "t2", 4, "http://b:8888", resource_version="42"), 130.0),  # new holder
    ],
)
def test_observe_restarts_the_clock_only_when_the_record_changes(read: LeaseRecord, since: float) -> None:
    seen = observe(Observation(HELD, 100.0), read, now=130.0)
    assert seen == Observation(read, since)


def test_observe_without_a_previous_record_starts_now() -> None:
    assert observe(None, HELD, now=7.0) == Observation(HELD, 7.0)


@pytest.mark.parametrize(
    ("holder", "duration", "now", "expected"),
    [
        ("", 15, 100.0, True),  # free (released): take at once
        ("me", 15, 100.0, True),  # ours: renew
        ("a", 15, 114.9, False),  # seen at 100, 100 + 15 = 115 > 114.9: still running
        ("a", 15, 115.0, True),  # 100 + 15 = 115: expired
        ("a", 1, 101.0, True),  # a release writes 1 s: 100 + 1 = 101
        ("a", 60, 130.0, False),  # the record's own duration counts, not ours: 100 + 60 > 130
    ],
)
def test_may_take(holder: str, duration: int, now: float, expected: bool) -> None:
    seen = Observation(LeaseRecord(holder, duration), since=100.0)
    assert may_take(seen, "me", now) is expected


def test_record_for_creation_renewal_and_takeover() -> None:
    timing = Timing()
    created = record_for(None, "me", "http://me:8888", "w1", timing)
    assert created == LeaseRecord("me", 15, "w1", "w1", 0, "http://me:8888")
    renewed = record_for(replace(created, resource_version="5"), "me", "http://me:8888", "w2", timing)
    # a renewal keeps acquireTime and leaseTransitions, moves renewTime, and keeps the precondition
    assert renewed == LeaseRecord("me", 15, "w1", "w2", 0, "http://me:8888", resource_version="5")
    taken = record_for(HELD, "me", "http://me:8888", "w3", timing)
    # a takeover: 3 + 1 = 4 transitions, acquireTime = renewTime = now
    assert taken == LeaseRecord("me", 15, "w3", "w3", 4, "http://me:8888", resource_version="41")


def test_lease_body_round_trips_and_names_the_precondition() -> None:
    body = HELD.lease_body("gpusched-extender", "gpusched-system")
    assert body["metadata"]["resourceVersion"] == "41"
    assert body["metadata"]["annotations"] == {LEADER_URL_ANNOTATION: "http://a:8888"}
    assert LeaseRecord.from_lease(body) == HELD
    # no resourceVersion on creation; empty times are null (the API cannot parse "")
    fresh = LeaseRecord("me").lease_body("l", "ns")
    assert "resourceVersion" not in fresh["metadata"]
    assert fresh["spec"]["acquireTime"] is None and fresh["spec"]["renewTime"] is None


def test_from_lease_of_a_lease_written_by_hand() -> None:
    assert LeaseRecord.from_lease({"metadata": {}, "spec": {}}) == LeaseRecord(lease_duration_s=0)


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [
        (15, 15, 2),  # renewDeadline must be below leaseDuration: a standby could take over first
        (15, 10, 10),  # retryPeriod must be below renewDeadline: no renewal would land in time
        (15, 10, 0),
    ],
)
def test_timing_refuses_orderings_that_break_the_handover(lease: float, renew: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retryPeriod < renewDeadline < leaseDuration"):
        Timing(lease, renew, retry)


def test_micro_time_is_utc_with_microseconds() -> None:
    local = datetime(2026, 1, 2, 4, 4, 5, 120, tzinfo=timezone(timedelta(hours=1)))
    assert micro_time(local) == "2026-01-02T03:04:05.000120Z"
    assert micro_time(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00.000000Z"
