"""Simulator speed: seconds per seed of the FGD protocol on the Alibaba default trace, per policy.

Every pod goes through the same Framework.decide the extender runs (1,213 nodes, about 10,800 pods
after inflation). Two baselines are measured in the same run, on the same seed: Random, whose time
is the pipeline's own cost (filters, the decision, GPU choice, bookkeeping), so a policy's time
above Random's is what its scoring costs; and FGD's policy, the published method gpusched's
default policy is compared with. Runs are interleaved (each repeat runs every policy once), so load
from other work on the machine falls on all policies alike; the median of the repeats is reported,
with CPU seconds and the load average before and after (on a shared machine wall seconds follow the
load, ratios much less). `--target` names the seconds per seed gpusched's policy should stay
under. Prints a table, or JSON with --json; never asserts a time.

    .venv/bin/python benchmarks/bench_sim.py [--policies random,fgd,gpusched] [--seed 42] [--repeat 3]
        [--target 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulations import fgd, policies, traces

BASELINES = ("random", "fgd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="random,fgd,gpusched")
    parser.add_argument("--trace", default="default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3, help="runs per policy, interleaved; the median is reported")
    parser.add_argument("--target", type=float, default=5.0, help="seconds per seed for gpusched's policy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    nodes = traces.load_nodes(traces.node_file())
    pods = traces.load_pods(traces.pod_file(args.trace))
    typical = fgd.typical_of(pods)
    names = [policies.canonical(p) for p in args.policies.split(",") if p.strip()]
    names = [b for b in BASELINES if b not in names] + names  # the baselines, measured in the same run
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, fgd.SeedResult] = {}
    load_before = os.getloadavg()
    for _ in range(max(args.repeat, 1)):
        for name in names:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fgd.replay(nodes, pods, name, args.seed, typical=typical, trace=args.trace)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    load_after = os.getloadavg()

    rows: list[dict[str, Any]] = []
    for name in names:
        wall_s = statistics.median(walls[name])
        pods_n = results[name].pods
        rows.append(
            {
                "policy": name,
                "seconds_per_seed": round(wall_s, 2),
                "seconds_each_run": [round(w, 2) for w in walls[name]],
                "cpu_seconds_per_seed": round(statistics.median(cpus[name]), 2),
                "pods": pods_n,
                "ms_per_decision": round(1000 * wall_s / pods_n, 3),
                "unallocated_gpu_pct": round(results[name].unallocated_gpu_pct, 3),
                "placed": results[name].placed,
            }
        )
    by_name = {r["policy"]: r for r in rows}
    for r in rows:
        for base in BASELINES:
            r[f"x_{base}"] = round(r["seconds_per_seed"] / by_name[base]["seconds_per_seed"], 2)
            r[f"cpu_x_{base}"] = round(r["cpu_seconds_per_seed"] / by_name[base]["cpu_seconds_per_seed"], 2)
        r["scoring_ms_per_decision"] = round(r["ms_per_decision"] - by_name["random"]["ms_per_decision"], 3)
    ours = by_name.get("gpusched")
    summary = {
        "trace": args.trace,
        "seed": args.seed,
        "nodes": len(nodes),
        "repeat": max(args.repeat, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "target_seconds": args.target,
        "gpusched_within_target": None if ours is None else ours["seconds_per_seed"] <= args.target,
        "results": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"One seed ({args.seed}) of the {args.trace} trace, {len(nodes)} nodes, {rows[0]['pods']} pods;"
        f" median of {summary['repeat']} interleaved runs; load average {load_before[0]:.2f} before,"
        f" {load_after[0]:.2f} after:"
    )
    print(
        f"{'policy':<14}{'s/seed':>8}{'cpu s':>8}{'ms/pod':>9}{'x Random':>10}{'x FGD':>8}{'cpu x FGD':>11}"
        f"{'unalloc %':>11}"
    )
    for r in rows:
        print(
            f"{policies.DISPLAY[r['policy']]:<14}{r['seconds_per_seed']:>8.2f}{r['cpu_seconds_per_seed']:>8.2f}"
            f"{r['ms_per_decision']:>9.3f}{r['x_random']:>10.2f}{r['x_fgd']:>8.2f}{r['cpu_x_fgd']:>11.2f}"
            f"{r['unallocated_gpu_pct']:>11.2f}"
        )
    if ours is not None:
        verdict = "within" if summary["gpusched_within_target"] else "over"
        print(f"gpusched: {ours['seconds_per_seed']:.2f} s per seed, {verdict} the target of {args.target:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
