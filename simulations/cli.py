"""gpusched-sim: placement what-ifs through the same core the extender runs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from scheduler.core.config import ConfigError
from scheduler.core.scenario import ScenarioError
from scheduler.state.kube import KubeError
from simulations import capacity, fgd, mixes, policies, traces
from simulations.report import print_comparison, print_gangs, print_placements, summarize, write_report
from simulations.whatif import PolicyResult, Replay, apply_changes

DEFAULT_POLICIES = ("kube-default", "gpusched")
PLACEMENTS_SHOWN = 40  # list every pod's placement by default up to this many pods


def _pairs(text: str, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"{what}: {part!r} is not NAME=NUMBER")
    return out


def add_whatif(sub: Any) -> None:
    p = sub.add_parser("whatif", help="replay a scenario (or a live cluster) under several policies")
    p.add_argument("scenario", nargs="?", help="scenario YAML (simulations/scenarios/demo.yaml)")
    p.add_argument(
        "--policy", action="append", help=f"policy to compare (repeatable; default: {', '.join(DEFAULT_POLICIES)})"
    )
    p.add_argument("--weights", default="", help="gpusched score weights to change, e.g. nvlink=5,cold-start=1")
    p.add_argument(
        "--add-nodes",
        action="append",
        default=[],
        metavar="TYPE=N",
        help="add N nodes of a scenario node type (live: N nodes like an existing node)",
    )
    p.add_argument("--drain", action="append", default=[], metavar="NODE", help="drain a node first (repeatable)")
    p.add_argument("--kubeconfig", help="snapshot this live cluster instead of reading a scenario")
    p.add_argument("--manifest", help="live mode: the pods (or workloads) to place")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--report", metavar="DIR", help="write PNG plots and summary.md into DIR")
    p.add_argument("--placements", action="store_true", help="also list where each pod went and why")
    p.add_argument(
        "--need",
        action="store_true",
        help="find the smallest set of added nodes (of the scenario's node types) that lets every pod and gang"
        " start within --within seconds of arriving (under the first --policy, default gpusched)",
    )
    p.add_argument("--within", type=float, default=0.0, metavar="SECONDS", help="--need: allowed wait (default 0)")
    p.add_argument(
        "--max-nodes", type=int, default=capacity.MAX_NODES, help="--need: most nodes to add (default %(default)s)"
    )


def run_whatif(args: argparse.Namespace, console: Console) -> int:
    names = [policies.canonical(p) for p in (args.policy or DEFAULT_POLICIES)]
    weights = _pairs(args.weights, "--weights")
    if args.kubeconfig:
        results = _live(args, names, weights)
        label = f"live cluster ({args.kubeconfig})"
    else:
        if not args.scenario:
            raise ScenarioError("whatif needs a SCENARIO file or --kubeconfig")
        scenario = yaml.safe_load(Path(args.scenario).read_text()) or {}
        add = {k: int(v) for k, v in _pairs(",".join(args.add_nodes), "--add-nodes").items()}
        scenario = apply_changes(scenario, add, args.drain)
        if args.need:
            return _need(scenario, args, weights, console)
        results = []
        with Progress(console=console, transient=True, disable=args.json) as progress:
            for name in names:
                task = progress.add_task(f"replaying under {name}", total=None)
                replay = Replay.from_scenario(scenario, name, weights if name == "gpusched" else None)

                def advance(done: int, total: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done, total=total)

                results.append(replay.run(advance))
        label = args.scenario
    return _output(results, args, console, label)


def _need(scenario: dict[str, Any], args: argparse.Namespace, weights: dict[str, float], console: Console) -> int:
    policy = policies.canonical((args.policy or ["gpusched"])[0])
    gpus_of = capacity.node_type_gpus(scenario)
    with Progress(console=console, transient=True, disable=args.json) as progress:
        task = progress.add_task("searching", total=None)

        def show(added: dict[str, int], late: capacity.Lateness) -> None:
            text = ", ".join(f"{n}={c}" for n, c in added.items()) or "nothing added"
            progress.update(task, description=f"{text}: {late.pods} pods late")

        need = capacity.find_need(
            scenario, args.within, policy, weights if policy == "gpusched" else None, args.max_nodes, show
        )
    if args.json:
        print(json.dumps({"scenario": args.scenario, **need.as_dict()}, indent=2))
        return 0 if need.found else 1
    within = f"within {args.within:g} s of arriving"
    if not need.found:
        console.print(
            f"[bold]No set of up to {args.max_nodes} added nodes lets every pod and gang start {within}[/bold]"
            f" under {policy}; best found: "
            + (", ".join(f"{c} x {n}" for n, c in need.added.items()) or "nothing")
            + f" ({need.gpus} GPUs), still late: {need.late.pods} pods ({', '.join(need.late.late_jobs[:8])})."
        )
        for reason in need.late.reasons[:5]:
            console.print(f"  {reason}")
        return 1
    if not need.added:
        console.print(f"Every pod and gang starts {within} under {policy}: no nodes need to be added.")
    else:
        table = Table(title=f"Smallest set of added nodes found: every pod and gang starts {within} ({policy})")
        for col in ("node type", "nodes", "GPUs per node", "GPUs"):
            table.add_column(col, justify="right" if col != "node type" else "left")
        for name, count in need.added.items():
            table.add_row(name, str(count), str(gpus_of[name]), str(count * gpus_of[name]))
        table.add_row("total", str(sum(need.added.values())), "", str(need.gpus))
        console.print(table)
    console.print(f"{need.replays} replays searched.")
    return 0


def _live(args: argparse.Namespace, names: list[str], weights: dict[str, float]) -> list[PolicyResult]:
    from simulations.live import add_like, drain, jobs_from_manifest, snapshot_cluster

    nodes, running = snapshot_cluster(args.kubeconfig)
    nodes, running, jobs = drain(nodes, running, args.drain)
    for like, count in _pairs(",".join(args.add_nodes), "--add-nodes").items():
        nodes = add_like(nodes, like, int(count))
    if args.manifest:
        jobs += jobs_from_manifest(Path(args.manifest))
    return [Replay(nodes, running, jobs, n, weights if n == "gpusched" else None).run() for n in names]


def _output(results: list[PolicyResult], args: argparse.Namespace, console: Console, label: str) -> int:
    if args.json:
        body = {
            "scenario": label,
            "policies": [
                {
                    **s,
                    "pods": [vars(p) for p in r.pods],
                    "gangs": [vars(g) for g in r.gangs],
                    "timeline": [
                        {"t": t, "allocated_gpus": a, "stranded_gpus": st, "pending_pods": pe, "held_gpus": h}
                        for t, a, st, pe, h in r.timeline
                    ],
                }
                for r, s in zip(results, summarize(results), strict=True)
            ],
        }
        print(json.dumps(body, indent=2))
    else:
        console.print(f"[bold]What-if on {label}[/bold]")
        few = max((len(r.pods) for r in results), default=0) <= PLACEMENTS_SHOWN
        if args.placements or args.kubeconfig or few:
            for r in results:
                print_placements(r, console)
        print_gangs(results, console)
        print_comparison(results, console)
        if not (args.placements or args.kubeconfig or few):
            console.print("Where each pod went and why: --placements (or placements.csv with --report DIR).")
    if args.report:
        files = write_report(results, Path(args.report), label)
        where = Path(args.report).resolve()
        (console if not args.json else Console(stderr=True)).print(
            f"Report written to {where}: {', '.join(f.name for f in files)}"
        )
    return 0


def add_fgd(sub: Any) -> None:
    p = sub.add_parser("fgd", help="the FGD evaluation protocol on an Alibaba GPU trace")
    p.add_argument("--nodes", default=None, help="node list CSV (default: the bundled trace's)")
    p.add_argument("--pods", default=None, help="pod list CSV (default: the bundled default trace)")
    p.add_argument("--policy", default="gpusched", help="Random, DotProd, GpuClustering, GpuPacking, BestFit, FGD, ...")
    p.add_argument("--seeds", default="42-51", help="seeds, e.g. 42-51 or 42,43")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--json", action="store_true")
    t = sub.add_parser("fgd-table", help="every bundled trace under every policy, next to the published values")
    t.add_argument("--seeds", default="42-51")
    t.add_argument("--jobs", type=int, default=None)
    t.add_argument(
        "--traces",
        default=",".join((*traces.TRACES, *mixes.MIXES)),
        help="bundled traces and gpusched's own multi-GPU-heavy mixes (gs-*, simulations/mixes.py)",
    )
    t.add_argument("--policies", default=",".join(policies.TRACE_POLICIES))
    t.add_argument("--json", action="store_true")


def run_fgd(args: argparse.Namespace, console: Console) -> int:
    nodes = args.nodes or str(traces.node_file())
    pods = args.pods or str(traces.pod_file("default"))
    for path in (nodes, pods):
        if not Path(path).is_file():
            raise ScenarioError(f"no such trace file: {path} (set {traces.TRACE_DIR_ENV} or pass --nodes/--pods)")
    policy = policies.canonical(args.policy)
    seeds = fgd.parse_seeds(args.seeds)
    label = Path(pods).stem.removeprefix("openb_pod_list_")
    tasks = [(label, nodes, pods, policy, seed) for seed in seeds]
    jobs = args.jobs or min(fgd.default_jobs(), len(tasks))
    summary = fgd.summarize(fgd.run_many(tasks, jobs))
    if args.json:
        print(json.dumps({"trace": label, "policy": policy, **summary}, indent=2))
        return 0
    published = traces.PUBLISHED.get(label, {}).get(policy)
    console.print(
        f"{policies.DISPLAY[policy]} on {label}, seeds {args.seeds}: unallocated GPU % at arrived = 100 %: "
        f"{summary['unallocated_gpu_pct_mean']:.2f} ± {summary['unallocated_gpu_pct_std']:.2f}"
        + (f" (published {published:.2f})" if published is not None else "")
        + f"; {summary['seconds_per_seed']:.1f} s per seed"
    )
    return 0


def run_fgd_table(args: argparse.Namespace, console: Console) -> int:
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))  # seven columns of "4.50 ± 0.06 (4.77)"
    names = [t.strip() for t in args.traces.split(",") if t.strip()]
    pols = [policies.canonical(p) for p in args.policies.split(",") if p.strip()]
    tasks = fgd.trace_tasks(names, pols, fgd.parse_seeds(args.seeds))
    missing = [t[2] for t in tasks if not Path(t[2]).is_file()] + [t[1] for t in tasks[:1] if not Path(t[1]).is_file()]
    if missing:
        raise ScenarioError(f"no such trace file: {missing[0]} (set {traces.TRACE_DIR_ENV})")
    started = time.perf_counter()
    with Progress(console=console, transient=True, disable=args.json) as progress:
        bar = progress.add_task("runs", total=len(tasks))
        results = fgd.run_many(tasks, args.jobs or fgd.default_jobs(), lambda _: progress.advance(bar))
    wall = time.perf_counter() - started
    cells: dict[tuple[str, str], list[fgd.SeedResult]] = {}
    for r in results:
        cells.setdefault((r.trace, r.policy), []).append(r)
    rows = {key: fgd.summarize(v) for key, v in cells.items()}
    if args.json:
        body = [
            {
                "trace": t,
                "policy": p,
                "published": traces.PUBLISHED.get(t, {}).get(p),
                **{k: v for k, v in s.items() if k != "per_seed"},
            }
            for (t, p), s in rows.items()
        ]
        print(json.dumps({"wall_seconds": round(wall, 1), "cells": body}, indent=2))
        return 0
    table = Table(title=f"Unallocated GPU % at arrived = 100 % (mean ± std over seeds {args.seeds}; published)")
    table.add_column("trace")
    for p in pols:
        table.add_column(policies.DISPLAY[p], justify="right")
    for t in names:
        cells_text = []
        for p in pols:
            s = rows[(t, p)]
            published = traces.PUBLISHED.get(t, {}).get(p)
            text = f"{s['unallocated_gpu_pct_mean']:.2f} ± {s['unallocated_gpu_pct_std']:.2f}"
            cells_text.append(text + (f" ({published:.2f})" if published is not None else ""))
        table.add_row(t + (" (gpusched's mix)" if mixes.is_mix(t) else ""), *cells_text)
    console.print(table)
    if any(mixes.is_mix(t) for t in names):
        console.print(
            "gs-* rows: gpusched's own mixes, resampled from the default trace so that 30-50 % of GPU pods"
            " ask for 2-8 GPUs at the same total demand (simulations/mixes.py); not in the FGD paper."
        )
    console.print(f"{len(tasks)} runs in {wall:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpusched-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_whatif(sub)
    add_fgd(sub)
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "whatif":
            return run_whatif(args, console)
        if args.command == "fgd":
            return run_fgd(args, console)
        if args.command == "fgd-table":
            return run_fgd_table(args, console)
    except (ScenarioError, ConfigError, KubeError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"gpusched-sim: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
