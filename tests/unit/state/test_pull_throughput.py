import threading
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.state.pull_throughput import (
    DEFAULT_PRIOR,
    MB,
    PullThroughput,
    parse_go_duration,
    parse_pulled_event,
)
from tests.builders import gpu_node

NEW = 'Successfully pulled image "nginx:1.25" in 3.2s (3.4s including waiting). Image size: 71234567 bytes.'
MID = 'Successfully pulled image "nginx:1.25" in 1m2.5s (1m3s including waiting)'
OLD = 'Successfully pulled image "ghcr.io/acme/llm:1.4" in 2m3.123456789s'


def event(message: str, host: str | None = "gpu-1", uid: str = "e1", count: int = 1, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "metadata": {"uid": uid, "namespace": "default"},
        "reason": "Pulled",
        "message": message,
        "count": count,
        "involvedObject": {"kind": "Pod", "name": "p"},
        **extra,
    }
    if host is not None:
        out["source"] = {"component": "kubelet", "host": host}
    return out


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3.2s", 3.2),
        ("1m2.5s", 62.5),
        ("500ms", 0.5),
        ("1h0m3s", 3603.0),
        ("2m0s", 120.0),
        ("12µs", 12e-6),
        ("12us", 12e-6),
        ("750ns", 750e-9),
        ("0s", 0.0),
        (".5s", 0.5),
        ("", None),
        ("1.5", None),
        ("3s5", None),
        ("abc", None),
        ("3 s", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    got = parse_go_duration(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("ev", "sizes", "expected"),
    [
        (event(NEW), None, ("gpu-1", 71234567, 3.2)),
        # 1.25 to 1.28: no size in the message, taken from the caller's table (normalised names).
        (event(MID), {"docker.io/library/nginx:1.25": 500 * MB}, ("gpu-1", 500 * MB, 62.5)),
        (event(MID), None, None),
        (event(OLD), {"ghcr.io/acme/llm:1.4": 15 * 10**9}, ("gpu-1", 15 * 10**9, 123.123456789)),
        (event('Container image "nginx:1.25" already present on machine'), None, None),
        (event(NEW, reason="Pulling"), None, None),
        (event(NEW, host=None, reportingInstance="gpu-9"), None, ("gpu-9", 71234567, 3.2)),
        (event(NEW, host=None), None, None),
        (event(NEW.replace("3.2s (", "0s (")), None, None),
        (event(NEW.replace("71234567", "0")), None, None),
        (event(NEW.replace(" in 3.2s", " in soon")), None, None),
        (
            {"reason": "Pulled", "note": NEW, "deprecatedSource": {"host": "gpu-2"}, "reportingInstance": ""},
            None,
            ("gpu-2", 71234567, 3.2),
        ),
        (
            event('Successfully pulled image "reg:5000/a/b@sha256:ab12" in 500ms. Image size: 20000000 bytes.'),
            None,
            ("gpu-1", 20000000, 0.5),
        ),
    ],
)
def test_parse_pulled_event(ev: dict[str, Any], sizes: dict[str, int] | None, expected: object) -> None:
    got = parse_pulled_event(ev, sizes)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        node, size, seconds = got
        assert (node, size) == expected[:2]  # type: ignore[index]
        assert seconds == pytest.approx(expected[2])  # type: ignore[index]


@pytest.mark.parametrize("bad", [None, "Pulled", 3, [], {"reason": "Pulled"}, {"reason": "Pulled", "message": None}])
def test_odd_input_gives_no_sample(bad: Any) -> None:
    assert parse_pulled_event(bad) is None
    assert PullThroughput().observe_event(bad) is False


def test_prior_until_learned_then_weighted_mean() -> None:
    est = PullThroughput(alpha=0.5)
    assert est.get("gpu-1") == DEFAULT_PRIOR
    assert est.learned("gpu-1") is None
    assert est.observe("gpu-1", 400 * MB, 2.0)  # 200 MB/s
    assert est.get("gpu-1") == pytest.approx(200 * MB)
    assert est.observe("gpu-1", 400 * MB, 1.0)  # 400 MB/s
    assert est.get("gpu-1") == pytest.approx(300 * MB)
    assert est.samples("gpu-1") == 2
    assert est.as_dict() == {"gpu-1": pytest.approx(300 * MB)}
    est.forget("gpu-1")
    assert est.get("gpu-1") == DEFAULT_PRIOR and est.as_dict() == {}


@pytest.mark.parametrize(
    ("size", "seconds", "counted"),
    [(9 * MB, 0.01, False), (10 * MB, 1.0, True), (500 * MB, 0.0, False), (500 * MB, -1.0, False), (0, 1.0, False)],
)
def test_small_or_malformed_pulls_are_ignored(size: int, seconds: float, counted: bool) -> None:
    est = PullThroughput()
    assert est.observe("n", size, seconds) is counted
    assert (est.learned("n") is not None) is counted


def test_a_pull_of_cached_layers_is_capped() -> None:
    est = PullThroughput(max_rate=2000 * MB)
    est.observe("n", 15 * 10**9, 0.5)
    assert est.get("n") == 2000 * MB


def test_event_counted_once_across_relists_and_again_when_repeated() -> None:
    est = PullThroughput(alpha=1.0)
    assert est.observe_event(event(NEW, uid="a"))
    assert not est.observe_event(event(NEW, uid="a"))  # the informer relisted
    assert est.samples("gpu-1") == 1
    assert est.observe_event(event(NEW, uid="a", count=2))  # kubelet aggregated a second, identical pull
    assert est.observe_event(event(NEW))  # another uid
    assert est.samples("gpu-1") == 3
    assert est.get("gpu-1") == pytest.approx(71234567 / 3.2)


def test_learned_rate_overrides_the_reports() -> None:
    est = PullThroughput()
    node = replace(gpu_node("gpu-1"), pull_bytes_per_s=50 * MB)
    assert est.apply(node) is node
    est.observe("gpu-1", 1000 * MB, 4.0)
    assert est.apply(node).pull_bytes_per_s == pytest.approx(250 * MB)
    assert est.apply(gpu_node("other")).pull_bytes_per_s == 0.0


@pytest.mark.parametrize("kwargs", [{"prior": 0}, {"alpha": 0}, {"alpha": 1.5}, {"min_bytes": -1}, {"max_rate": 0}])
def test_bad_settings_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PullThroughput(**kwargs)  # type: ignore[arg-type]


def test_concurrent_feeding_counts_every_sample() -> None:
    est = PullThroughput()

    def feed(node: str) -> None:
        for _ in range(200):
            est.observe(node, 100 * MB, 1.0)

    threads = [threading.Thread(target=feed, args=(f"n{i % 2}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert est.samples("n0") == est.samples("n1") == 400


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(10 * MB, 10**11), st.floats(0.05, 3600)), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
)
def test_rate_stays_within_the_samples(pulls: list[tuple[int, float]], alpha: float) -> None:
    est = PullThroughput(alpha=alpha)
    rates = [min(size / seconds, est.max_rate) for size, seconds in pulls]
    for size, seconds in pulls:
        est.observe("n", size, seconds)
    assert min(rates) * (1 - 1e-9) <= est.get("n") <= max(rates) * (1 + 1e-9)
