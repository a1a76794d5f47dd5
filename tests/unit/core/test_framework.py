import logging
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core import gpusets
from scheduler.core.args import PluginArgs
from scheduler.core.config import ConfigError, SchedulerConfig
from scheduler.core.framework import MAX_SCORE, SCORE_SLACK, Cycle, Framework, Rejection, ScorePlugin, count_per_row
from scheduler.core.podspec import parse_pod
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.plugins import registry
from tests.builders import GiB, gpu_node, pod

FW = registry.build(registry.config_from(None))


def hetero() -> ClusterSnapshot:
    nodes = [
        gpu_node("h100", 8, "H100-80GB", 80, "nvswitch", (12, 4)),
        gpu_node("a100", 8, "A100-40GB", 40, "nvlink-pairs", (12, 2)),
        gpu_node("l4", 4, "L4", 24, "pcie", (12, 2)),
    ]
    return ClusterSnapshot(nodes)


def test_memory_floor_leaves_only_the_big_gpus() -> None:
    snap = hetero()
    d = FW.decide(snap, parse_pod(pod("p", 1, {"gpusched.io/gpu-memory": "60Gi"})))
    assert [snap.names[i] for i in d.feasible] == ["h100"]
    assert "60.0GiB" in d.reasons[1] and "largest 40.0GiB" in d.reasons[1]


def test_unconstrained_single_gpu_prefers_the_smallest_gpu() -> None:
    snap = hetero()
    d = FW.decide(snap, parse_pod(pod("p", 1)))
    assert snap.names[d.best()] == "l4"  # type: ignore[index]


def test_connected_set_beats_scattered_free_gpus() -> None:
    a = gpu_node("scattered", 8, "A100-40GB", 40, "nvlink-pairs")
    b = gpu_node("paired", 8, "A100-40GB", 40, "nvlink-pairs")
    running = [parse_pod(pod(f"s{i}", 1, node="scattered", gpuIds=[2 * i])) for i in range(4)]
    running += [parse_pod(pod("p0", 4, node="paired", gpuIds=[0, 1, 2, 3]))]
    snap = ClusterSnapshot([a, b], running)
    fw_pod = parse_pod(pod("four", 4))
    d = FW.decide(snap, fw_pod)
    assert snap.names[d.best()] == "paired"  # type: ignore[index]
    assert FW.choose_gpus(snap, fw_pod, 1) == (4, 5, 6, 7)


def test_cuda_requirement_reason_names_versions() -> None:
    snap = hetero()
    d = FW.decide(snap, parse_pod(pod("p", 1, {"gpusched.io/cuda": "12.8"})))
    assert d.feasible.size == 0
    assert d.reasons[0] == "needs CUDA driver >= 12.8, node has 12.4"
    assert all(d.rejected_by[i] == "cuda" for i in range(3))


def test_stale_report_turns_node_away_and_missing_report_does_not() -> None:
    nodes = [gpu_node("fresh"), gpu_node("stale", report_age_s=500.0), gpu_node("none", report_age_s=None)]
    snap = ClusterSnapshot(nodes)
    d = FW.decide(snap, parse_pod(pod("p", 1)))
    assert sorted(snap.names[i] for i in d.feasible) == ["fresh", "none"]
    assert "stale: 500s old" in d.reasons[1]
    # Without a report, model and memory are unknown: a pod that names them cannot go there.
    d = FW.decide(snap, parse_pod(pod("p", 1, {"gpusched.io/gpu-memory": "10Gi"})))
    assert "no GPUNodeReport" in d.reasons[2]


def test_locality_prefers_cached_image_and_weights() -> None:
    warm = gpu_node("warm", images={"ghcr.io/acme/llm:1": 15 * GiB}, models={"org/m@main": 16 * GiB})
    cold = gpu_node("cold")
    snap = ClusterSnapshot([cold, warm])
    d = FW.decide(snap, parse_pod(pod("p", 1, {"gpusched.io/model": "org/m@main"}, image="ghcr.io/acme/llm:1")))
    assert snap.names[d.best()] == "warm"  # type: ignore[index]
    assert d.scores["locality"].tolist() == [0.0, 100.0]


def test_malformed_pod_is_a_pod_level_error() -> None:
    d = FW.decide(hetero(), parse_pod(pod("p", 1, {"gpusched.io/gpu-memory": "x"})))
    assert d.error and d.best() is None


def test_shared_gpu_goes_to_the_tightest_fitting_gpu() -> None:
    node = gpu_node("a", gpus=2)
    snap = ClusterSnapshot(
        [node], [parse_pod(pod("half", 0, node="a", gpuIds=[1], annotations={"gpusched.io/gpu-milli": "500"}))]
    )
    share = parse_pod(pod("q", 0, {"gpusched.io/gpu-milli": "400"}))
    assert FW.choose_gpus(snap, share, 0) == (1,)


def test_config_rejects_score_plugin_without_weight_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="has no weight"):
        registry.config_from({"plugins": {"score": [{"name": "nvlink"}]}})
    with pytest.raises(ConfigError, match="unknown score plugin"):
        registry.config_from({"plugins": {"score": [{"name": "magic", "weight": 1}]}})
    with pytest.raises(ConfigError, match="unknown config keys"):
        registry.config_from({"weights": {}})
    with pytest.raises(ConfigError, match="positive"):
        registry.config_from({"plugins": {"score": [{"name": "nvlink", "weight": -1}]}})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 7), max_size=8),
    st.integers(1, 8),
    st.sampled_from(["nvswitch", "nvlink-pairs", "pcie"]),
)
def test_scores_stay_in_range_and_chosen_gpus_are_free(held: list[int], want: int, kind: str) -> None:
    held = sorted(set(held))
    running = [parse_pod(pod("r", len(held), node="n", gpuIds=held))] if held else []
    snap = ClusterSnapshot([gpu_node("n", 8, interconnect=kind), gpu_node("m", 8, interconnect=kind)], running)
    p = parse_pod(pod("x", want))
    refused = FW.bad_scores.copy()
    d = FW.decide(snap, p)
    # The framework clips what it keeps on the Decision, so look at what each plugin answered.
    assert FW.bad_scores == refused, "the framework had to refuse a default plugin's score"
    cycle = Cycle(snap, p, FW.config)
    for plugin, _ in FW.scores:
        raw = np.asarray(plugin.score(cycle, d.feasible), dtype=np.float64)
        assert raw.shape == d.feasible.shape, plugin.name
        assert np.all((raw >= -SCORE_SLACK) & (raw <= MAX_SCORE + SCORE_SLACK)), (plugin.name, raw)
    weighted = sum(w * d.scores[plugin.name] for plugin, w in FW.scores) / FW.weight_sum
    assert np.allclose(d.total, weighted)
    for node in d.feasible:
        gpus = FW.choose_gpus(snap, p, int(node))
        assert len(gpus) == want and len(set(gpus)) == want
        assert all(snap.gpu_milli_free[node, g] == 1000 for g in gpus)


# ------------------------------------------------------------------------- bad scores
class Scripted(ScorePlugin):
    """A score plugin that answers a fixed score per node name (a stand-in for a buggy plugin)."""

    name = "scripted"

    def __init__(self, by_node: Mapping[str, float], name: str = "scripted") -> None:
        super().__init__(PluginArgs(), SchedulerConfig())
        self.by_node = dict(by_node)
        self.name = name  # type: ignore[misc]  # per instance, so two can run side by side

    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        return np.array([self.by_node[cycle.snapshot.names[i]] for i in nodes], dtype=np.float64)


def scripted(by_node: Mapping[str, float]) -> tuple[Framework, ClusterSnapshot]:
    """A framework of that one plugin (no filter) over one plain node per entry, in the entry's order."""
    plugin = Scripted(by_node)
    return Framework(SchedulerConfig(), (), [], [(plugin, 1.0)]), ClusterSnapshot([gpu_node(n) for n in by_node])


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), float("-inf"), -5.0, 150.0, MAX_SCORE + 100 * SCORE_SLACK, -100 * SCORE_SLACK],
    ids=["nan", "+inf", "-inf", "negative", "above-100", "just-past-the-slack", "just-below-the-slack"],
)
def test_a_bad_score_counts_zero_is_counted_and_logged(bad: float, caplog: pytest.LogCaptureFixture) -> None:
    # The bad node comes first: were its score kept, NaN and +inf would win argmax, a tie would too.
    fw, snap = scripted({"bad": bad, "good": 40.0})
    caplog.set_level(logging.ERROR, logger="scheduler.core.framework")

    d = fw.decide(snap, parse_pod(pod("p", 1)))

    assert d.scores["scripted"].tolist() == [0.0, 40.0]
    assert d.total.tolist() == [0.0, 40.0]
    assert snap.names[d.best()] == "good"  # type: ignore[index]
    assert fw.bad_scores == {"scripted": 1}
    (record,) = caplog.records
    assert record.levelname == "ERROR"
    assert "scripted" in record.getMessage() and "default/p" in record.getMessage()


@pytest.mark.parametrize(
    ("value", "kept"),
    [(MAX_SCORE + 1e-10, MAX_SCORE), (MAX_SCORE + SCORE_SLACK / 2, MAX_SCORE), (-SCORE_SLACK / 2, 0.0)],
    ids=["100.0000000001", "half-the-slack-above", "half-the-slack-below"],
)
def test_rounding_within_the_slack_is_clipped_silently(
    value: float, kept: float, caplog: pytest.LogCaptureFixture
) -> None:
    fw, snap = scripted({"rounded": value, "good": 40.0})
    caplog.set_level(logging.DEBUG, logger="scheduler.core.framework")

    d = fw.decide(snap, parse_pod(pod("p", 1)))

    assert d.scores["scripted"].tolist() == [kept, 40.0]
    assert fw.bad_scores == {} and caplog.records == []


def test_every_kind_of_bad_score_at_once_and_only_from_the_plugin_that_gave_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scores = {
        "nan": float("nan"),
        "inf": float("inf"),
        "neg": -5.0,
        "big": 150.0,
        "slack": 100.0000000001,
        "good": 90.0,
    }
    buggy = Scripted(scores, name="buggy")
    sane = Scripted(dict.fromkeys(scores, 50.0), name="sane")
    fw = Framework(SchedulerConfig(), (), [], [(buggy, 3.0), (sane, 1.0)])
    snap = ClusterSnapshot([gpu_node(n) for n in scores])
    caplog.set_level(logging.ERROR, logger="scheduler.core.framework")

    d = fw.decide(snap, parse_pod(pod("p", 1)))

    assert d.scores["buggy"].tolist() == [0.0, 0.0, 0.0, 0.0, 100.0, 90.0]
    assert d.scores["sane"].tolist() == [50.0] * 6  # the other plugin's scores still count for those nodes
    assert np.allclose(d.total, [12.5, 12.5, 12.5, 12.5, 87.5, 80.0])
    assert snap.names[d.best()] == "slack"  # type: ignore[index]
    assert fw.bad_scores == {"buggy": 4}
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "buggy" in caplog.records[0].getMessage() and "sane" not in caplog.records[0].getMessage()
    # Counted per node and per decision: the metric keeps going up while the plugin misbehaves.
    fw.decide(snap, parse_pod(pod("q", 1)))
    assert fw.bad_scores == {"buggy": 8}


# ---------------------------------------------------------------- eligible GPUs, counted per node
@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8, 16])
def test_count_per_row_counts_the_true_values_of_each_row(gpus: int) -> None:
    mask = np.random.default_rng(gpus).random((50, gpus)) > 0.4
    assert count_per_row(mask).tolist() == mask.sum(axis=1).tolist()  # bit counts (1, 2, 4, 8) or sums
    assert count_per_row(mask[::2]).tolist() == mask[::2].sum(axis=1).tolist()  # not contiguous: summed
    assert count_per_row(np.zeros((0, gpus), dtype=bool)).tolist() == []


def test_eligible_gpus_read_from_every_node_equal_those_built_for_the_nodes_asked() -> None:
    # 8 nodes of 8, 4 or 2 GPUs (padded to 8 columns), some GPUs taken; a 1-GPU pod.
    snap = ClusterSnapshot([gpu_node(f"n{i}", (8, 4, 2)[i % 3], interconnect="pcie") for i in range(8)])
    for node, gpus in ((0, (0, 1, 2)), (4, (3,)), (7, (0, 1))):
        snap.place(parse_pod(pod(f"q{node}", len(gpus))), node, gpus)
    one = parse_pod(pod("p", 1))
    cycle = Cycle(snap, one, FW.config)
    few, most = np.array([6, 1], dtype=np.intp), np.array([7, 0, 2, 4, 5], dtype=np.intp)
    for nodes in (few, most, few):  # 2 of 8 nodes: built for them; 5 of 8: for every node, then read
        want = gpusets.eligible_gpus(snap, one, nodes)
        assert cycle.eligible(nodes).tolist() == want.tolist()
        assert cycle.eligible_count(nodes).tolist() == want.sum(axis=1).tolist()
    assert cycle.eligible_count(np.arange(8)).tolist() == [5, 4, 2, 8, 3, 2, 8, 2]  # 8-3, 4, 2, 8, 4-1, ...


@pytest.mark.parametrize(
    ("distinct", "alike", "groups"),
    [
        (1, True, 1),  # one reason, preemption helping nowhere: one group
        (1, False, 2),  # one reason, helping on every other node: 2 groups
        (3, False, 6),  # 3 reasons x (helps, does not): i*7 % 3 and i % 2 meet in all 6 pairs
        (12, False, 12),  # i*7 % 12 has the parity of i (7 odd, 12 even): each reason on one side only
    ],
)
def test_a_rejection_grouped_by_reason_and_resolvability_gives_each_node_its_own(
    distinct: int, alike: bool, groups: int
) -> None:
    nodes = np.arange(48, dtype=np.intp) * 3
    reasons = [f"reason {(i * 7) % distinct}" for i in range(nodes.size)]
    resolvable = np.zeros(nodes.size, dtype=bool) if alike else np.arange(nodes.size) % 2 == 0
    rejection = Rejection.worded("p", nodes, reasons, resolvable, transient=False)
    assert rejection.reasons == reasons
    seen = {}
    for reason, grouped_nodes, may in rejection.grouped():
        for node in grouped_nodes.tolist():
            seen[node] = (reason, may)
    assert seen == {n: (r, m) for n, r, m in zip(nodes.tolist(), reasons, resolvable.tolist(), strict=True)}
    assert len(rejection.grouped()) == groups
