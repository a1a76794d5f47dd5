"""Simulator speed: one seed of the FGD protocol on the Alibaba default trace, per policy.

Every pod goes through the same Framework.decide the extender runs (1,213 nodes, about 10,800 pods
after inflation). Random is the baseline measured in the same run: its time is the pipeline's own
cost (filters, the decision, GPU choice, bookkeeping), so a policy's time above Random's is what
its scoring costs. Prints a table, or JSON with --json; never asserts a time.

    .venv/bin/python benchmarks/bench_sim.py [--policies random,fgd,gpusched] [--seed 42] [--repeat 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulations import fgd, policies, traces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="random,bestfit,fgd,gpusched")
    parser.add_argument("--trace", default="default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="runs per policy; the median is reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    nodes = traces.load_nodes(traces.node_file())
    pods = traces.load_pods(traces.pod_file(args.trace))
    typical = fgd.typical_of(pods)
    names = [policies.canonical(p) for p in args.policies.split(",") if p.strip()]
    if "random" not in names:
        names.insert(0, "random")  # the baseline, measured in the same run
    rows: list[dict[str, Any]] = []
    for name in names:
        walls, cpus = [], []
        result = None
        for _ in range(max(args.repeat, 1)):
            wall, cpu = time.perf_counter(), time.process_time()
            result = fgd.replay(nodes, pods, name, args.seed, typical=typical, trace=args.trace)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        assert result is not None
        wall_s = statistics.median(walls)
        rows.append(
            {
                "policy": name,
                "seconds_per_seed": round(wall_s, 2),
                "cpu_seconds_per_seed": round(statistics.median(cpus), 2),
                "pods": result.pods,
                "decisions_per_second": round(result.pods / wall_s, 1),
                "ms_per_decision": round(1000 * wall_s / result.pods, 3),
                "unallocated_gpu_pct": round(result.unallocated_gpu_pct, 3),
            }
        )
    base = next(r for r in rows if r["policy"] == "random")
    for r in rows:
        r["x_random"] = round(r["seconds_per_seed"] / base["seconds_per_seed"], 2)
        r["scoring_ms_per_decision"] = round(r["ms_per_decision"] - base["ms_per_decision"], 3)
    if args.json:
        print(json.dumps({"trace": args.trace, "seed": args.seed, "nodes": len(nodes), "results": rows}, indent=2))
        return 0
    print(f"One seed ({args.seed}) of the {args.trace} trace, {len(nodes)} nodes, {rows[0]['pods']} pods:")
    print(f"{'policy':<14}{'s/seed':>8}{'cpu s':>8}{'ms/pod':>9}{'x Random':>10}{'scoring ms':>12}{'unalloc %':>11}")
    for r in rows:
        print(
            f"{policies.DISPLAY[r['policy']]:<14}{r['seconds_per_seed']:>8.2f}{r['cpu_seconds_per_seed']:>8.2f}"
            f"{r['ms_per_decision']:>9.3f}{r['x_random']:>10.2f}{r['scoring_ms_per_decision']:>12.3f}"
            f"{r['unallocated_gpu_pct']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
