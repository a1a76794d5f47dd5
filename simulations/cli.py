"""gpusched-sim: placement what-ifs through the same core the extender runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress, TaskID

from scheduler.core.config import ConfigError
from scheduler.core.scenario import ScenarioError
from scheduler.state.kube import KubeError
from simulations import policies
from simulations.report import print_comparison, print_placements, summarize, write_report
from simulations.whatif import PolicyResult, Replay, apply_changes

DEFAULT_POLICIES = ("kube-default", "gpusched")


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
    p.add_argument("--add-nodes", action="append", default=[], metavar="TYPE=N",
                   help="add N nodes of a scenario node type (live: N nodes like an existing node)")  # fmt: skip
    p.add_argument("--drain", action="append", default=[], metavar="NODE", help="drain a node first (repeatable)")
    p.add_argument("--kubeconfig", help="snapshot this live cluster instead of reading a scenario")
    p.add_argument("--manifest", help="live mode: the pods (or workloads) to place")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--report", metavar="DIR", help="write PNG plots and summary.md into DIR")
    p.add_argument("--placements", action="store_true", help="also list where each pod went and why")


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
                {**s, "pods": [vars(p) for p in r.pods], "gangs": [vars(g) for g in r.gangs]}
                for r, s in zip(results, summarize(results), strict=True)
            ],
        }
        print(json.dumps(body, indent=2))
    else:
        console.print(f"[bold]What-if on {label}[/bold]")
        if args.placements or args.kubeconfig:
            for r in results:
                print_placements(r, console)
        print_comparison(results, console)
    if args.report:
        files = write_report(results, Path(args.report), label)
        where = Path(args.report).resolve()
        (console if not args.json else Console(stderr=True)).print(
            f"Report written to {where}: {', '.join(f.name for f in files)}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpusched-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_whatif(sub)
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "whatif":
            return run_whatif(args, console)
    except (ScenarioError, ConfigError, KubeError, OSError, yaml.YAMLError) as exc:
        print(f"gpusched-sim: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
