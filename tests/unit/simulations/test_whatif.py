import re
from pathlib import Path

import pytest
import yaml

from scheduler.core.scenario import ScenarioError
from scheduler.core.types import NodeState
from simulations.cli import main
from simulations.whatif import Replay, apply_changes, compare, load_jobs, rack_of, tier_span

DEMO = Path(__file__).resolve().parents[3] / "simulations" / "scenarios" / "demo.yaml"

SMALL = {
    "nodeTypes": {"big": {"gpus": 8, "gpuModel": "H100", "gpuMemory": "80Gi", "interconnect": "nvswitch"}},
    "nodes": [
        {"name": "r1-{i}", "count": 2, "type": "big", "labels": {"network.topology.nvidia.com/leaf": "r1"}},
        {"name": "r2-{i}", "count": 2, "type": "big", "labels": {"network.topology.nvidia.com/leaf": "r2"}},
    ],
    "workload": [
        # Four unrelated single-GPU services (no shared owner, so nothing asks to spread them).
        *({"name": f"small{i}", "kind": "inference", "gpus": 1, "arrive": i} for i in range(4)),
        {"name": "gang", "kind": "training", "members": 2, "gpus": 8, "arrive": 10, "duration": 100},
        {"name": "late", "kind": "training", "members": 2, "gpus": 8, "arrive": 20, "duration": 100},
    ],
}


def test_gpusched_packs_small_pods_and_places_gangs_whole_in_one_rack() -> None:
    base, ours = compare(SMALL, ["kube-default", "gpusched"])
    # kube-default spreads the four 1-GPU pods over all four nodes: no whole node is left for gangs.
    assert {p.node for p in base.pods if p.job.startswith("small")} == {"r1-0", "r1-1", "r2-0", "r2-1"}
    assert base.summary()["gangs_whole"] == 0
    assert base.summary()["pods_pending"] == 4
    assert "needs 8 GPUs" in base.summary()["pending_reasons"].popitem()[0]
    # gpusched packs them on one node; the first gang takes a whole rack, the second waits for it.
    assert len({p.node for p in ours.pods if p.job.startswith("small")}) == 1
    summary = ours.summary()
    assert summary["gangs_whole"] == 2 and summary["gangs_split_across_racks"] == 0
    late = next(g for g in ours.gangs if g.name == "late")
    assert late.waited_s == pytest.approx(90.0)  # it starts when "gang" departs at t=110


def test_replicas_of_one_deployment_spread_over_racks() -> None:
    scenario = {**SMALL, "workload": [{"name": "web", "kind": "inference", "replicas": 2, "gpus": 1}]}
    (ours,) = compare(scenario, ["gpusched"])
    racks = {p.node.split("-")[0] for p in ours.pods if p.node}
    assert racks == {"r1", "r2"}


def test_replay_never_over_commits() -> None:
    scenario = yaml.safe_load(DEMO.read_text())
    for policy in ("kube-default", "gpusched"):
        replay = Replay.from_scenario(scenario, policy)
        replay.run()
        assert replay.snapshot.over_committed() == []


def test_drain_and_add_nodes() -> None:
    changed = apply_changes(SMALL, {"big": 2}, ["r1-0"])
    replay = Replay.from_scenario(changed, "gpusched")
    assert "added-big-1" in replay.snapshot.index
    assert not replay.snapshot.ready[replay.snapshot.index["r1-0"]]
    result = replay.run()
    assert all(p.node != "r1-0" for p in result.pods)
    with pytest.raises(ScenarioError, match="unknown node type"):
        apply_changes(SMALL, {"tiny": 1})
    with pytest.raises(ScenarioError, match="unknown nodes"):
        Replay.from_scenario(apply_changes(SMALL, drain=["ghost"]), "gpusched")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "kind": "batch"}, "kind must be"),
        ({"kind": "training"}, "needs at least a name"),
        ({"name": "x", "gpuMemory": "lots"}, "gpusched.io/gpu-memory"),
    ],
)
def test_bad_workload_entries_are_named(entry: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_jobs({"workload": [entry]})


def test_cold_start_counts_what_is_missing_and_later_replicas_start_warm() -> None:
    scenario = {
        "nodes": [
            {
                "name": "n0",
                "gpus": 8,
                "gpuModel": "A",
                "gpuMemory": "80Gi",
                "pullBandwidth": "100Mi",
                "downloadBandwidth": "100Mi",
                "diskBandwidth": "1Gi",
                "images": {"img:1": "10Gi"},
            },
            {
                "name": "n1",
                "gpus": 8,
                "gpuModel": "A",
                "gpuMemory": "80Gi",
                "pullBandwidth": "100Mi",
                "downloadBandwidth": "100Mi",
                "diskBandwidth": "1Gi",
            },
        ],
        "workload": [
            {
                "name": "m",
                "kind": "inference",
                "replicas": 2,
                "gpus": 1,
                "image": "img:1",
                "model": "org/m@main",
                "modelBytes": "10Gi",
            }
        ],
    }
    (result,) = compare(scenario, ["gpusched"])
    first, second = result.pods
    assert first.node == second.node == "n0"
    assert first.cold_start_s == pytest.approx(10 * 1024 / 100 + 10)  # download at 100 MiB/s, read at 1 GiB/s
    assert second.cold_start_s == pytest.approx(10.0)  # weights now on the node: read only


def test_cli_runs_the_demo_with_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["whatif", str(DEMO), "--json", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    import json

    body = json.loads(out)
    assert [p["policy"] for p in body["policies"]] == ["kube-default", "gpusched"]
    ours = body["policies"][1]
    base = body["policies"][0]
    assert ours["mean_stranded_gpus"] < base["mean_stranded_gpus"]
    assert ours["cold_start_mean_s"] < base["cold_start_mean_s"]
    assert ours["gangs_split_across_racks"] < base["gangs_split_across_racks"]
    assert ours["timeline"][0]["t"] == 0.0 and {"allocated_gpus", "stranded_gpus"} <= set(ours["timeline"][-1])
    for name in ("allocation.png", "fragmentation.png", "cold-start-cdf.png", "placements.csv", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "## Training gangs" in (tmp_path / "summary.md").read_text()
    rows = (tmp_path / "placements.csv").read_text().splitlines()
    assert rows[0].startswith("policy,pod,job") and len(rows) == 1 + sum(len(p["pods"]) for p in body["policies"])
    assert main(["whatif", str(DEMO), "--policy", "nonsense"]) == 2


def test_small_scenarios_list_every_placement_and_the_gangs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert main(["whatif", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Placements under gpusched" in out and "small3" in out
    assert "Training gangs" in out and "2/2" in out


def test_gang_span_is_the_innermost_tier_holding_it() -> None:
    (ours,) = compare(SMALL, ["gpusched"])
    assert {g.name: (g.racks, g.span) for g in ours.gangs} == {"gang": (1, "leaf switch"), "late": (1, "leaf switch")}
    snap = Replay.from_scenario(SMALL, "gpusched").snapshot
    assert tier_span(snap, [snap.index["r1-0"]]) == "node"
    assert tier_span(snap, [snap.index["r1-0"], snap.index["r1-1"]]) == "leaf switch"
    assert tier_span(snap, [snap.index["r1-0"], snap.index["r2-0"]]) == "cluster"  # no spine or zone labels


def test_fragmentation_learns_the_typical_pods_from_the_workload() -> None:
    replay = Replay.from_scenario(SMALL, "gpusched")
    shapes = {p.shape: p.weight for p in replay.typical}
    assert shapes[(8000, 1, 1000, ())] == 4.0  # the four single-GPU services (8 CPUs each by default)
    assert shapes[(8000, 8, 1000, ())] == 4.0  # two gangs of two 8-GPU members


def test_verdicts_makespan_completion_pending_and_idle_gpu_hours() -> None:
    base, ours = compare(SMALL, ["kube-default", "gpusched"])
    s = ours.summary()
    # "gang" arrives at 10, starts at once, ends at 110; "late" arrives at 20, starts at 110, ends at 210.
    assert s["makespan_s"] == 210.0
    assert s["jobs_finished"] == "2/2"  # the four services have no duration: not jobs that finish
    assert s["jct_mean_s"] == pytest.approx((100 + 190) / 2)
    assert s["jct_p95_s"] == pytest.approx(100 + 0.95 * (190 - 100))  # numpy's linear percentile of two
    assert s["jct_training_mean_s"] == pytest.approx(145.0)
    # Pods: four services and two "gang" members wait 0 s, two "late" members 90 s each: 180 / 8.
    assert s["pending_mean_s"] == pytest.approx(22.5)
    # From 20 to 110 "late" waits while 4 + 16 of 32 GPUs are allocated: 12 GPUs x 90 s = 0.3 GPU-hours.
    assert s["idle_gpu_hours_while_waiting"] == pytest.approx(0.3)
    # kube-default never places a gang whole: no makespan, nothing finished.
    b = base.summary(horizon=ours.end())
    assert b["makespan_s"] is None and b["jobs_finished"] == "0/2" and b["jct_mean_s"] is None


def test_gpus_held_by_half_placed_gangs_are_allocated_but_not_running() -> None:
    scenario = {
        **SMALL,
        "workload": [
            {"name": "small", "kind": "inference", "gpus": 1},
            {"name": "wide", "kind": "training", "members": 4, "gpus": 8, "arrive": 10, "duration": 100},
        ],
    }
    base, ours = compare(scenario, ["kube-default", "gpusched"])
    # kube-default puts three members on the three whole nodes from t=10 and the fourth never fits:
    # 24 GPUs held, running nothing. gpusched's planner holds nothing for a gang that cannot fit.
    assert base.timeline[-1][4] == 24
    b, o = base.summary(horizon=100.0), ours.summary(horizon=100.0)
    # Over 100 s: allocated (1 x 100 + 24 x 90) / (32 x 100) = 70.6 %; running 1 GPU: 3.1 %.
    assert b["mean_allocated_pct"] == pytest.approx(100 * (100 + 24 * 90) / 3200, abs=0.01)
    assert b["mean_running_pct"] == pytest.approx(100 * 100 / 3200, abs=0.01)
    assert o["mean_running_pct"] == o["mean_allocated_pct"] == pytest.approx(100 * 100 / 3200, abs=0.01)


def test_time_weighted_means_share_one_horizon() -> None:
    from simulations.report import summarize

    scenario = {
        **SMALL,
        "workload": [
            {"name": "short", "kind": "inference", "gpus": 8, "duration": 100},
            {"name": "long", "kind": "inference", "gpus": 8, "arrive": 0, "duration": 300},
        ],
    }
    (a,) = compare({**scenario, "workload": scenario["workload"][:1]}, ["gpusched"])
    (b,) = compare(scenario, ["gpusched"])
    sa, sb = summarize([a, b])
    # One horizon, the longer run's 300 s: 8 of 32 GPUs for 100 s is 8.33 % of it, not 25 % of 100 s.
    assert sa["horizon_s"] == sb["horizon_s"] == 300.0
    assert sa["mean_allocated_pct"] == pytest.approx(100 * 8 * 100 / (32 * 300), abs=0.01)
    # 8 GPUs for 300 s and 8 more for the first 100: (8 x 300 + 8 x 100) / (32 x 300) = 33.33 %.
    assert sb["mean_allocated_pct"] == pytest.approx(100 * (8 * 300 + 8 * 100) / (32 * 300), abs=0.01)


def test_demo_keeps_serving_pods_off_the_small_disk_nodes() -> None:
    scenario = yaml.safe_load(DEMO.read_text())
    base, ours = compare(scenario, ["kube-default", "gpusched"])
    kept = [p for p in ours.pods if p.kept_off]
    assert kept and all(set(p.kept_off) <= {f"l4-edge-{i}" for i in range(4)} for p in kept)
    # The 15 GiB serving image with 1.6 GiB margin does not fit a 16 GiB image filesystem (10 GiB free
    # on l4-edge-0, which holds the 6 GiB notebook image).
    assert "image filesystem: needs 15.0 GiB + 1.6 GiB margin, 10.0 GiB free" in kept[0].kept_off["l4-edge-0"]
    serving = [p for p in ours.pods if p.job.startswith(("chat-", "support-bot"))]
    assert not any((p.node or "").startswith("l4-edge") for p in serving)
    assert ours.summary()["pods_placed_where_disk_short"] == 0
    assert base.summary()["pods_kept_off_by_disk_fit"] == 0  # kube-default's stand-in has no disk-fit


def readme_example(name: str) -> dict:
    """The scenario of the README's "Topology labels" example."""
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    block = re.search(rf"```yaml\n# {re.escape(name)}\n(.*?)```", text, re.S)
    assert block is not None, f"README has no {name} example"
    scenario: dict = yaml.safe_load(block.group(1))
    return scenario


def test_readme_gke_example_keeps_the_gang_in_one_block_without_topology_tiers() -> None:
    scenario = readme_example("gke-blocks.yaml")
    assert "topologyTiers" not in scenario
    base, ours = compare(scenario, ["kube-default", "gpusched"])
    (gang,) = ours.gangs
    assert {p.node for p in ours.pods} == {"b2-sb1-0", "b2-sb1-1", "b2-sb2-0", "b2-sb2-1"}
    # The README's table cells: 4 placed, 2 subblocks (racks), held by one block.
    assert (gang.placed, gang.racks, gang.span) == (4, 2, "block")
    (theirs,) = base.gangs
    assert (theirs.placed, theirs.racks, theirs.span) == (4, 3, "cluster")


def test_demo_topograph_gangs_stay_in_one_leaf_switch() -> None:
    scenario = yaml.safe_load(DEMO.read_text())
    labels = {k for n in scenario["nodes"] for k in n.get("labels", {})}
    assert labels == {
        "topology.kubernetes.io/zone",
        "network.topology.nvidia.com/spine",
        "network.topology.nvidia.com/leaf",
    }
    (ours,) = compare(scenario, ["gpusched"])
    assert ours.gangs and all((g.whole, g.racks, g.span) == (True, 1, "leaf switch") for g in ours.gangs)


def test_racks_are_leaf_switches_or_subblocks_within_their_outer_tiers() -> None:
    def node(labels: dict[str, str]) -> NodeState:
        return NodeState(name="n", gpu_count=8, labels=labels)

    leaf = "network.topology.nvidia.com/leaf"
    sub, block = "cloud.google.com/gce-topology-subblock", "cloud.google.com/gce-topology-block"
    assert rack_of(node({leaf: "l1"})) == rack_of(node({leaf: "l1", "kubernetes.io/hostname": "x"}))
    assert rack_of(node({block: "b1", sub: "s1"})) != rack_of(node({block: "b2", sub: "s1"}))
    assert rack_of(node({})) == ("n",)  # unlabelled: a rack of its own
