"""When the publisher writes, and how it backs off: a fake clock, a recording sink, and a real
kubernetes client pointed at a port nothing listens on."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from gpu_agent.publisher import ApplyError, Backoff, KubernetesSink, MemorySink, Publisher
from tests.builders import kubeconfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sink(MemorySink):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(node_uids={"n1": "uid-1"}, **kwargs)

    @property
    def written(self) -> list[dict[str, Any]]:
        return [r for _, r in self.reports]


def report(
    time_text: str = "2025-01-01T00:00:00Z", pods: tuple[str, ...] = (), util: int = 0, images: int = 0
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": "n1",
        "reportTime": time_text,
        "gpus": [{"index": 0, "pods": list(pods), "utilizationPercent": util}],
    }
    if images:
        spec["images"] = [
            {"name": f"registry.example/img-{i}:1", "digest": "sha256:x", "bytes": i} for i in range(images)
        ]
    return {"apiVersion": "gpusched.io/v1alpha1", "kind": "GPUNodeReport", "metadata": {"name": "n1"}, "spec": spec}


def publisher(sink: Sink, clock: Clock, **kwargs: Any) -> Publisher:
    kwargs.setdefault("backoff", Backoff(initial=1, factor=2, maximum=8, jitter=0))
    kwargs.setdefault("refresh", 300)
    sink.clock = clock
    return Publisher(sink, heartbeat=30, min_interval=5, clock=clock, wall_clock=lambda: 1.7e9 + clock.now, **kwargs)


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial=0.5, factor=2, maximum=4, jitter=0)
    assert [b.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    b.reset()
    assert b.next() == 0.5
    jittered = Backoff(initial=10, factor=1, jitter=0.2, rng=random.Random(7))
    assert all(8 <= jittered.next() <= 12 for _ in range(50))


def test_reports_are_written_on_change_and_the_lease_carries_the_heartbeat() -> None:
    """Finding 7: an unchanged report is never rewritten; liveness is a Lease renewed every
    heartbeat; volatile fields ride on the slower refresh."""
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock)
    assert pub.due_in() is None and pub.publish_if_due() is None
    # (time, report offered, report writes so far, lease renewals so far)
    steps = [
        (0, report(), 1, 1),
        (10, report("2025-01-01T00:00:10Z"), 1, 1),  # only reportTime moved: nothing to write
        (30, report("2025-01-01T00:00:30Z"), 1, 2),  # heartbeat: the Lease, not the report
        (40, report("2025-01-01T00:00:40Z", util=90), 1, 2),  # volatile: waits for the refresh
        (60, report("2025-01-01T00:01:00Z", util=90), 1, 3),
        (300, report("2025-01-01T00:05:00Z", util=90), 2, 4),  # refresh due: volatile change written
        (301, report("2025-01-01T00:05:01Z", util=90, pods=("ns/a",)), 2, 4),  # rate bound: 5 s
        (305, report("2025-01-01T00:05:05Z", util=90, pods=("ns/a",)), 3, 4),
    ]
    for t, offered, writes, renewals in steps:
        clock.now = t
        pub.offer(offered)
        while pub.due_in() == 0:
            pub.publish_if_due()
        assert (len(sink.reports), len(sink.leases)) == (writes, renewals), t
    lease = sink.leases[-1][1]
    assert lease["metadata"] == {
        "name": "n1",
        "namespace": "gpusched-system",
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-1"}],
    }
    assert lease["spec"]["holderIdentity"] == "gpusched-agent/n1"
    assert lease["spec"]["leaseDurationSeconds"] == 90
    assert lease["spec"]["renewTime"] == "2023-11-14T22:18:20.000000Z"  # 1.7e9 + 300 s
    assert sink.written[-1]["metadata"]["ownerReferences"] == lease["metadata"]["ownerReferences"]
    assert pub.stats.writes_ok == 3 and pub.stats.renewals_ok == 4


def test_lease_lapses_when_reports_stop_or_cannot_be_written() -> None:
    """An agent that cannot sample (NVML down) or cannot write its report (RBAC, CRD, admission)
    must not keep its node fresh."""
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock)
    pub.offer(report())
    pub.publish_if_due()
    assert len(sink.leases) == 1
    for t in range(30, 200, 30):  # no more offers: NVML fails
        clock.now = t
        pub.publish_if_due()
    # renewed while the last offer is within lease_duration - heartbeat (60 s), then never
    assert [t for t, _ in sink.leases] == [0, 30, 60]
    blocked, clock2 = Sink(), Clock()
    pub2 = publisher(blocked, clock2)
    blocked.down = True
    pub2.offer(report())
    assert pub2.publish_if_due() is False
    blocked.down = False
    clock2.now = 0.5
    pub2.offer(report())
    assert pub2.renew_if_due() is None and blocked.leases == []  # the report is not in the API yet


def test_a_recreated_node_gives_its_new_uid_to_the_next_writes() -> None:
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock, node_check=300)
    pub.offer(report())
    pub.publish_if_due()
    sink.node_uids["n1"] = "uid-2"  # the Node was deleted and created again under the same name
    clock.now = 300
    pub.offer(report(pods=("ns/b",)))
    pub.publish_if_due()
    assert sink.written[-1]["metadata"]["ownerReferences"][0]["uid"] == "uid-2"
    assert sink.leases[-1][1]["metadata"]["ownerReferences"][0]["uid"] == "uid-2"
    # Unchanged content, but the Node is recreated again: the report is rewritten with the new owner.
    sink.node_uids["n1"] = "uid-3"
    clock.now = 600
    pub.offer(report(pods=("ns/b",)))
    pub.publish_if_due()
    pub.publish_if_due()
    assert sink.written[-1]["metadata"]["ownerReferences"][0]["uid"] == "uid-3"


def test_a_report_the_api_refuses_as_too_large_goes_out_without_its_inventory() -> None:
    """Finding 8: GPU and health updates never stop for an oversize inventory."""
    sink, clock = Sink(max_bytes=2000), Clock()
    pub = publisher(sink, clock)
    pub.offer(report(images=100))
    assert pub.publish_if_due() is True
    assert "images" not in sink.written[-1]["spec"] and sink.written[-1]["spec"]["gpus"]
    assert pub.stats.shrunk == 1 and pub.stats.writes_failed == 0 and len(sink.leases) == 1


def test_a_change_is_written_as_soon_as_the_rate_bound_allows() -> None:
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock)
    pub.offer(report())
    pub.publish_if_due()
    clock.now = 2
    pub.offer(report(pods=("ns/a",)))
    assert pub.due_in() == 3  # min_interval 5 s after the last write
    assert pub.publish_if_due() is None
    clock.now = 5
    assert pub.publish_if_due() is True
    assert sink.written[-1]["spec"]["gpus"][0]["pods"] == ["ns/a"]


def test_unreachable_api_backs_off_exponentially_and_then_writes_the_latest() -> None:
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock, backoff=Backoff(initial=1, factor=2, maximum=40, jitter=0))
    sink.down = True
    pub.offer(report())
    attempts = []
    for _ in range(200):
        if pub.publish_if_due() is False:
            attempts.append(clock.now)
        clock.now += 0.5
        if clock.now >= 60:
            break
    # min_interval (5 s) floors the first delays; then 8, 16, 32 (the doubling backoff).
    assert attempts == [0, 5, 10, 15, 23, 39]
    assert pub.stats.writes_failed == 6 and "connection refused" in pub.stats.last_error
    pub.offer(report("2025-01-01T00:01:00Z", pods=("ns/late",)))
    sink.down = False
    clock.now = 39 + 32
    assert pub.publish_if_due() is True
    assert [w["spec"] for w in sink.written] == [report("2025-01-01T00:01:00Z", pods=("ns/late",))["spec"]]
    assert pub.backoff.attempts == 0 and pub.stats.last_error == ""


@pytest.mark.parametrize(
    "kwargs",
    [{"heartbeat": 0}, {"min_interval": -1}, {"refresh": 0}, {"heartbeat": 30, "lease_duration": 30}],
)
def test_periods_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Publisher(Sink(), **kwargs)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kubernetes_sink_raises_apply_error_fast_when_the_api_is_unreachable(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{closed_port()}")
    sink = KubernetesSink(str(config), timeout=(1.0, 1.0))
    clock = Clock()
    pub = Publisher(sink, heartbeat=30, min_interval=0, clock=clock, backoff=Backoff(jitter=0))
    pub.offer(report())
    started = time.monotonic()
    try:
        with pytest.raises(ApplyError, match="API unreachable") as raised:
            sink.apply(report())
        assert raised.value.status is None
        assert pub.publish_if_due() is False
        assert pub.due_in() == 1.0  # retried after the first backoff step, the agent keeps running
    finally:
        sink.close()
    assert time.monotonic() - started < 5
    assert sink.path("gpu-1") == "/apis/gpusched.io/v1alpha1/gpunodereports/gpu-1"
