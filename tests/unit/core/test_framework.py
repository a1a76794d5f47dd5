import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.config import ConfigError
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
    d = FW.decide(snap, p)
    assert np.all((d.total >= 0) & (d.total <= 100))
    for scores in d.scores.values():
        assert np.all((scores >= 0) & (scores <= 100))
    for node in d.feasible:
        gpus = FW.choose_gpus(snap, p, int(node))
        assert len(gpus) == want and len(set(gpus)) == want
        assert all(snap.gpu_milli_free[node, g] == 1000 for g in gpus)
