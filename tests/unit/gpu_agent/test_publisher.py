"""When the publisher writes, and how it backs off: a fake clock, a recording sink, and a real
kubernetes client pointed at a port nothing listens on."""

from __future__ import annotations

import copy
import random
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_agent.publisher import ApplyError, Backoff, KubernetesSink, Publisher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.written: list[Mapping[str, Any]] = []
        self.down = False

    def apply(self, report: Mapping[str, Any]) -> None:
        if self.down:
            raise ApplyError("API unreachable: connection refused")
        self.written.append(copy.deepcopy(report))


def report(time_text: str = "2025-01-01T00:00:00Z", pods: tuple[str, ...] = (), util: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "gpusched.io/v1alpha1",
        "kind": "GPUNodeReport",
        "metadata": {"name": "n1"},
        "spec": {
            "nodeName": "n1",
            "reportTime": time_text,
            "gpus": [{"index": 0, "pods": list(pods), "utilizationPercent": util}],
        },
    }


def publisher(sink: Sink, clock: Clock, **kwargs: Any) -> Publisher:
    kwargs.setdefault("backoff", Backoff(initial=1, factor=2, maximum=8, jitter=0))
    return Publisher(sink, heartbeat=30, min_interval=5, clock=clock, **kwargs)


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial=0.5, factor=2, maximum=4, jitter=0)
    assert [b.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    b.reset()
    assert b.next() == 0.5
    jittered = Backoff(initial=10, factor=1, jitter=0.2, rng=random.Random(7))
    assert all(8 <= jittered.next() <= 12 for _ in range(50))


def test_first_report_is_written_at_once_and_unchanged_ones_on_the_heartbeat() -> None:
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock)
    assert pub.due_in() is None and pub.publish_if_due() is None
    pub.offer(report())
    assert pub.publish_if_due() is True and len(sink.written) == 1
    clock.now = 10
    pub.offer(report("2025-01-01T00:00:10Z", util=90))  # only volatile fields changed
    assert pub.due_in() == 20 and pub.publish_if_due() is None
    clock.now = 30
    assert pub.publish_if_due() is True
    assert sink.written[-1]["spec"]["reportTime"] == "2025-01-01T00:00:10Z"
    assert pub.stats.writes_ok == 2 and pub.stats.last_success_report_time == "2025-01-01T00:00:10Z"


def test_the_same_report_is_never_written_twice() -> None:
    """When no newer report comes (NVML failing), the one in the API keeps its reportTime and ages."""
    sink, clock = Sink(), Clock()
    pub = publisher(sink, clock)
    pub.offer(report())
    assert pub.publish_if_due() is True
    clock.now = 1000
    assert pub.due_in() is None and pub.publish_if_due() is None
    pub.offer(report("2025-01-01T00:16:40Z"))
    assert pub.publish_if_due() is True and len(sink.written) == 2


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
    assert sink.written == [report("2025-01-01T00:01:00Z", pods=("ns/late",))]
    assert pub.backoff.attempts == 0 and pub.stats.last_error == ""


def test_heartbeat_and_min_interval_are_validated() -> None:
    with pytest.raises(ValueError):
        Publisher(Sink(), heartbeat=0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kubernetes_sink_raises_apply_error_fast_when_the_api_is_unreachable(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    sink = KubernetesSink(str(kubeconfig), timeout=(1.0, 1.0))
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
