"""freshness (filter and score): trust a node's GPU view only while its report is fresh."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import Cycle
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest
from scheduler.plugins.freshness import Freshness
from tests.builders import gpu_node

GPU_POD = PodRequest("default", "p", gpu_count=1)
CPU_POD = PodRequest("default", "c", cpu_milli=1000)
MIG_POD = PodRequest("default", "m", mig_profile="1g.12gb", mig_count=1)


def snapshot(ages: list[float | None]) -> ClusterSnapshot:
    """One node per age (seconds since its GPUNodeReport; None: no report)."""
    return ClusterSnapshot([gpu_node(f"n{i}", report_age_s=age) for i, age in enumerate(ages)])


def plugin(args: dict[str, Any] | None = None) -> Freshness:
    return Freshness.create(args, None)


def run(
    ages: list[float | None], args: dict[str, Any] | None = None, p: PodRequest = GPU_POD, ttl: float = 90.0
) -> tuple[list[bool], dict[str, str]]:
    snap = snapshot(ages)
    cycle = Cycle(snap, p, SchedulerConfig(report_ttl_s=ttl))
    fresh = Freshness.create(args, cycle.config)
    every = np.arange(len(ages))
    ok = np.asarray(fresh.filter(cycle, every), dtype=bool)
    return ok.tolist(), {snap.names[i]: fresh.reason(cycle, int(i)) for i in every[~ok]}


def scores(ages: list[float | None], args: dict[str, Any] | None = None, ttl: float = 90.0) -> list[float]:
    snap = snapshot(ages)
    config = SchedulerConfig(report_ttl_s=ttl)
    return Freshness.create(args, config).score(Cycle(snap, GPU_POD, config), np.arange(len(ages))).tolist()


# ----------------------------------------------------------------- filter
@pytest.mark.parametrize(
    ("ages", "args", "p", "ttl", "ok", "reasons"),
    [
        pytest.param([0.0, 45.0, 90.0], None, GPU_POD, 90.0, [True, True, True], {}, id="up to the TTL is fresh"),
        pytest.param(
            [90.0, 500.0],
            None,
            GPU_POD,
            90.0,
            [True, False],  # 500 > 90
            {"n1": "GPUNodeReport is stale: 500s old, TTL 90s"},
            id="past the TTL is stale",
        ),
        pytest.param(
            [90.0, 500.0],
            None,
            MIG_POD,
            90.0,
            [True, False],  # 500 > 90: its MIG instances come from the report too
            {"n1": "GPUNodeReport is stale: 500s old, TTL 90s"},
            id="a MIG pod trusts only a fresh report",
        ),
        pytest.param([500.0], None, GPU_POD, 600.0, [True], {}, id="a longer TTL keeps it fresh"),  # 500 <= 600
        pytest.param([None, 0.0], None, GPU_POD, 90.0, [True, True], {}, id="no report passes by default"),
        pytest.param(
            [None, 0.0, 500.0],
            {"requireReport": True},
            GPU_POD,
            90.0,
            [False, True, False],
            {
                "n0": "node has no GPUNodeReport (requireReport is on)",
                "n2": "GPUNodeReport is stale: 500s old, TTL 90s",
            },
            id="requireReport turns away nodes without one",
        ),
        pytest.param(
            [None, 500.0], {"requireReport": True}, CPU_POD, 90.0, [True, True], {}, id="cpu-only pods pass everywhere"
        ),
    ],
)
def test_filter_and_reasons(
    ages: list[float | None],
    args: dict[str, Any] | None,
    p: PodRequest,
    ttl: float,
    ok: list[bool],
    reasons: dict[str, str],
) -> None:
    assert run(ages, args, p, ttl) == (ok, reasons)


def test_stale_rejections_are_transient() -> None:
    assert Freshness.transient is True
    assert plugin().resolvable(Cycle(snapshot([500.0]), GPU_POD, SchedulerConfig()), 0) is False


# ----------------------------------------------------------------- score
@pytest.mark.parametrize(
    ("ages", "args", "ttl", "expected"),
    [
        pytest.param([0.0], None, 90.0, [100.0], id="new report"),  # 100 - 50*0/90 = 100
        pytest.param([45.0], None, 90.0, [75.0], id="half the TTL"),  # 100 - 50*45/90 = 75
        pytest.param([90.0], None, 90.0, [50.0], id="at the TTL"),  # 100 - 50*90/90 = 50
        pytest.param([500.0], None, 90.0, [50.0], id="stale is held at 50"),  # min(500, 90) = 90 -> 50
        pytest.param([30.0], None, 120.0, [87.5], id="another TTL"),  # 100 - 50*30/120 = 87.5
        pytest.param([None, 0.0], None, 90.0, [0.0, 100.0], id="no report scores scoreMissing 0"),
        pytest.param([None, 9.0], {"scoreMissing": 30}, 90.0, [30.0, 95.0], id="scoreMissing 30"),  # 100 - 50*9/90
    ],
)
def test_scores(ages: list[float | None], args: dict[str, Any] | None, ttl: float, expected: list[float]) -> None:
    assert scores(ages, args, ttl) == pytest.approx(expected)


def test_a_report_stamped_ahead_of_the_clock_scores_100_at_most() -> None:
    # The extender's store hands the snapshot each report's reportTime (scheduler/state/store.py),
    # which is after now when the agent's clock runs ahead of the extender's. Such a report is as
    # new as it gets: 100 (the documented range is 0..100), not 100 - 50*(-30)/90 = 116.7.
    snap = snapshot([0.0, 0.0])
    snap.report_time[0] = snap.read_at + 30.0
    config = SchedulerConfig()
    got = plugin().score(Cycle(snap, GPU_POD, config), np.arange(2))
    assert got.tolist() == pytest.approx([100.0, 100.0])


# ----------------------------------------------------------------- args
@pytest.mark.parametrize(
    ("args", "key"),
    [
        pytest.param({"requireReport": "false"}, "requireReport", id="a string is not a boolean"),
        pytest.param({"requireReport": 1}, "requireReport", id="a number is not a boolean"),
        pytest.param({"scoreMissing": 101}, "scoreMissing", id="scoreMissing above 100"),
        pytest.param({"scoreMissing": -1}, "scoreMissing", id="scoreMissing below 0"),
        pytest.param({"scoreMissing": "50"}, "scoreMissing", id="scoreMissing as text"),
        pytest.param({"ttl": 30}, "ttl", id="unknown key"),
    ],
)
def test_bad_args(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pluginArgs freshness\.{key}:"):
        plugin(args)


# ----------------------------------------------------------------- range
@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(0, 1e7)), min_size=1, max_size=8),
    st.floats(1, 3600),
    st.floats(0, 100),
    st.booleans(),
)
def test_scores_stay_within_0_and_100(ages: list[float | None], ttl: float, missing: float, require: bool) -> None:
    got = np.asarray(scores(ages, {"scoreMissing": missing, "requireReport": require}, ttl))
    assert np.isfinite(got).all()
    assert ((got >= 0) & (got <= 100)).all()
    reported = np.array([a is not None for a in ages])
    assert (got[reported] >= 50 - 1e-9).all()  # a report scores 50..100, however old (up to rounding)
    assert (got[~reported] == missing).all()
