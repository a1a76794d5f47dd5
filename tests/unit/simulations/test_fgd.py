"""The FGD protocol's pieces on small synthetic traces: inflation, order, metric, replay, loaders."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from scheduler.core.config import ConfigError
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.plugins import registry
from simulations import fgd, mixes, policies, traces
from simulations.cli import main
from simulations.traces import TraceError, TracePod

# 152 GPUs: 1 % of the capacity is more than any one pod asks, so arrivals pass through 100 %.
NODES_CSV = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
    f"node-{i:02d},32000,131072,{g},{m}\n" for i, (g, m) in enumerate([(8, "G2")] * 16 + [(2, "T4"), (4, "V100")] * 4)
)
POD_ROWS = [
    (4000, 1, 1000, ""),
    (2000, 1, 500, ""),
    (2000, 1, 300, "T4"),
    (8000, 0, 0, ""),
    (6000, 1, 1000, ""),
    (2000, 1, 810, ""),
    (4000, 1, 1000, "G2|V100"),
    (1000, 1, 200, ""),
] * 2
PODS_CSV = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
    + "".join(
        f"pod-{i:03d},{cpu},4096,{n},{m},{spec},LS,Running,0,0,0\n" for i, (cpu, n, m, spec) in enumerate(POD_ROWS)
    )
)


@pytest.fixture
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes, pods = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes.write_text(NODES_CSV)
    pods.write_text(PODS_CSV)
    return nodes, pods


def pod(name: str, n: int, m: int) -> TracePod:
    return TracePod(name, 1000, 1024, n, m)


# ---------------------------------------------------------------- loaders
def test_loaders_read_nodes_and_pods(trace: tuple[Path, Path]) -> None:
    nodes = traces.load_nodes(trace[0])
    assert [(n.name, n.gpu_count, n.gpus[0].model) for n in nodes][15:18] == [
        ("node-15", 8, "G2"),
        ("node-16", 2, "T4"),
        ("node-17", 4, "V100"),
    ]
    pods = traces.load_pods(trace[1])
    assert len(pods) == 16
    share = pods[2].request()
    assert (share.gpu_count, share.gpu_milli, share.gpu_models) == (0, 300, ("T4",))
    whole = pods[6].request()
    assert (whole.gpu_count, whole.gpu_milli, whole.gpu_models) == (1, 0, ("G2", "V100"))
    assert pods[3].request().wants_gpu is False


def test_loaders_name_the_bad_row(tmp_path: Path) -> None:
    bad = tmp_path / "pods.csv"
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,10,2,500\n")
    with pytest.raises(TraceError, match=r"pods\.csv:2"):
        traces.load_pods(bad)
    with pytest.raises(TraceError, match="no-such"):
        traces.load_pods(tmp_path / "no-such.csv")


def test_trace_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / traces.TRACE_NAME).mkdir()
    monkeypatch.setenv(traces.TRACE_DIR_ENV, str(tmp_path))
    assert traces.trace_dir() == tmp_path / traces.TRACE_NAME
    monkeypatch.setenv(traces.TRACE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert traces.trace_dir() == tmp_path / "elsewhere"


def test_trace_ships_with_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(traces.TRACE_DIR_ENV, raising=False)
    repo = Path(__file__).resolve().parents[3]
    assert traces.trace_dir() == repo / "simulations" / "data" / traces.TRACE_NAME
    for name in traces.TRACES:
        assert traces.pod_file(name).is_file(), name
    assert len(traces.load_nodes(traces.node_file())) == 1213  # the README's node count


# ---------------------------------------------------------------- inflation and order
def test_inflation_keeps_the_trace_and_stops_at_the_first_draw_that_would_pass_the_limit() -> None:
    base = [pod("a", 1, 1000), pod("b", 1, 500), pod("c", 0, 0), pod("d", 2, 1000)]
    capacity = 4000  # 1.3x = 5200; the trace already asks 3500
    out = fgd.inflate(base, capacity, np.random.default_rng(42))
    assert out[:4] == base
    total = sum(p.gpu_total for p in out)
    assert total <= 1.3 * capacity
    # Replay the draws: the first one whose per-GPU share would pass the limit ends it.
    rng = np.random.default_rng(42)
    running, added = 3500, 0
    while True:
        pick = base[int(rng.integers(len(base)))]
        if running + pick.gpu_milli > 1.3 * capacity:
            break
        running += pick.gpu_total
        added += 1
    assert len(out) == 4 + added and total == running


def test_the_limit_compares_the_per_gpu_share_not_the_whole_request() -> None:
    # 2 x 1000 = 2000 would pass 1.3 x 1000 from 0, but the rule adds a draw while total + 1000 fits.
    out = fgd.inflate([pod("big", 2, 1000)], 1000, np.random.default_rng(0), ratio=1.3)
    assert [p.name for p in out] == ["big"]  # 2000 already asked; 2000 + 1000 > 1300
    out = fgd.inflate([pod("big", 2, 1000)], 10_000, np.random.default_rng(0), ratio=1.3)
    assert sum(p.gpu_total for p in out) == 14_000  # 12000 + 1000 <= 13000, then 14000 + 1000 > 13000


def test_order_sorts_by_name_then_shuffles_reproducibly() -> None:
    pods = [pod(n, 1, 1000) for n in ("c", "a", "b", "d")]
    one = fgd.arrival_order(pods, np.random.default_rng(5))
    two = fgd.arrival_order(list(reversed(pods)), np.random.default_rng(5))
    assert [p.name for p in one] == [p.name for p in two]
    assert sorted(p.name for p in one) == ["a", "b", "c", "d"]


def test_workload_depends_only_on_the_seed() -> None:
    pods = [pod(f"p{i}", 1, 500) for i in range(10)]
    assert fgd.workload(pods, 4000, 3) == fgd.workload(pods, 4000, 3)
    assert fgd.workload(pods, 4000, 3) != fgd.workload(pods, 4000, 4)


# ---------------------------------------------------------------- metric
def test_allocation_curve_means_alloc_per_integer_arrived_pct() -> None:
    capacity = 1000
    arrived = np.array([10, 995, 1000, 1004, 1010, 1300])  # 1 %, 100 % (x3: 99.5 rounds up), 101 %, 130 %
    allocated = np.array([10, 900, 940, 950, 950, 960])
    curve = fgd.allocation_curve(arrived, allocated, capacity)
    assert curve[1] == pytest.approx(1.0)
    assert curve[100] == pytest.approx((90.0 + 94.0 + 95.0) / 3)
    assert fgd.unallocated_at(curve) == pytest.approx(100 - (90.0 + 94.0 + 95.0) / 3)
    assert np.isnan(fgd.unallocated_at({50: 40.0}))


@pytest.mark.parametrize(("text", "seeds"), [("42-51", list(range(42, 52))), ("7", [7]), ("1,3, 5-6", [1, 3, 5, 6])])
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert fgd.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "5-2", "x", "1-y"])
def test_parse_seeds_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        fgd.parse_seeds(text)


# ---------------------------------------------------------------- policies
def test_policy_names_and_aliases() -> None:
    assert [policies.canonical(n) for n in ("FGD", "BestFit", "best-fit", "DotProd", "kube", "GPUSCHED")] == [
        "fgd",
        "bestfit",
        "bestfit",
        "dotprod",
        "kube-default",
        "gpusched",
    ]
    with pytest.raises(ConfigError, match="unknown policy"):
        policies.canonical("first-fit")


def test_gpusched_policy_is_the_default_config_plus_resources_fit() -> None:
    from scheduler.core.config import DEFAULT_FILTERS, DEFAULT_SCORES

    config = policies.policy_config("gpusched", weights={"nvlink": 9})
    assert config["plugins"]["filter"] == [*DEFAULT_FILTERS, "resources-fit"]
    weights = {e["name"]: e["weight"] for e in config["plugins"]["score"]}
    assert weights == {**dict(DEFAULT_SCORES), "nvlink": 9}


# ---------------------------------------------------------------- replay and CLI
@pytest.mark.parametrize("policy", policies.TRACE_POLICIES)
def test_replay_places_what_fits_and_never_over_commits(trace: tuple[Path, Path], policy: str) -> None:
    nodes, pods = traces.load_nodes(trace[0]), traces.load_pods(trace[1])
    result = fgd.replay(nodes, pods, policy, 42)
    assert result.placed + result.failed == result.pods == len(fgd.workload(pods, fgd.capacity_milli(nodes), 42))
    assert 0 <= result.unallocated_gpu_pct <= 100
    assert result.curve and max(result.curve) >= 100


def test_fgd_cli_json(trace: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "fgd",
            "--nodes",
            str(trace[0]),
            "--pods",
            str(trace[1]),
            "--policy",
            "BestFit",
            "--seeds",
            "1-3",
            "--jobs",
            "1",
            "--json",
        ]
    )
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    values = [s["unallocated_gpu_pct"] for s in body["per_seed"]]
    assert [s["seed"] for s in body["per_seed"]] == [1, 2, 3]
    assert body["unallocated_gpu_pct_mean"] == pytest.approx(np.mean(values))
    assert body["unallocated_gpu_pct_std"] == pytest.approx(np.std(values))


def test_fgd_cli_names_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fgd", "--nodes", str(tmp_path / "n.csv"), "--pods", str(tmp_path / "p.csv")]) == 2
    assert "n.csv" in capsys.readouterr().err


# ---------------------------------------------------------------- pinned placements
# Every 20th node and every 20th pod of the bundled trace (61 nodes; about 550 pods after
# inflation), seed 7. Where each pod went, digested; the digests were taken before the simulator's
# speed work and must not move: a faster path that changes one placement is a different policy.
PINNED = [
    ("default", "gpusched", 545, 412, "fd02b6a3d48a8c04"),
    ("default", "fgd", 545, 409, "9518a0de27aba849"),
    ("gpuspec10", "gpusched", 545, 411, "ae55499c53079b2c"),  # pods that name GPU models
    ("gpuspec10", "fgd", 545, 407, "48d0146a9c1d7a2e"),
    ("gs-multigpu40", "gpusched", 161, 111, "2ff610ca7c3e22a0"),  # 40 % of GPU pods ask for 2-8 GPUs
    ("gs-multigpu40", "fgd", 161, 111, "a988d70203addbf3"),
]


@pytest.mark.parametrize(("trace_name", "policy", "pods", "placed", "digest"), PINNED)
def test_placements_of_a_small_seeded_run_stay_pinned(
    trace_name: str, policy: str, pods: int, placed: int, digest: str
) -> None:
    nodes = traces.load_nodes(traces.node_file())[::20]
    trace_pods = traces.load_pods(traces.pod_file(mixes.BASE_TRACE if mixes.is_mix(trace_name) else trace_name))
    if mixes.is_mix(trace_name):
        trace_pods = mixes.load_mix(trace_name, trace_pods)
    trace_pods = trace_pods[::20]
    config = policies.policy_config(policy, seed=7, typical=fgd.typical_of(trace_pods))
    framework = registry.build(registry.config_from(config))
    snapshot = ClusterSnapshot(nodes)
    order = fgd.workload(trace_pods, fgd.capacity_milli(nodes), 7)
    for item in order:
        framework.place_best(snapshot, item.request())
    where = "".join(f"{key}:{p.node}:{','.join(map(str, p.gpus))};" for key, p in sorted(snapshot.placements.items()))
    assert (len(order), len(snapshot.placements)) == (pods, placed)
    assert hashlib.sha256(where.encode()).hexdigest()[:16] == digest
    assert not snapshot.over_committed()
