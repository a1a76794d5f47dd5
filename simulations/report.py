"""What-if reports: a comparison table for the terminal, PNG plots and a markdown summary."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from simulations.whatif import PolicyResult

ROWS = (
    ("makespan_s", "makespan: last training or batch job done (s)"),
    ("jobs_finished", "training and batch jobs finished"),
    ("jct_mean_s", "job completion time, mean (s; training and batch)"),
    ("jct_p95_s", "job completion time, p95 (s; training and batch)"),
    ("jct_training_mean_s", "training job completion time, mean (s)"),
    ("pending_mean_s", "pending time per pod, mean (s)"),
    ("pending_p95_s", "pending time per pod, p95 (s)"),
    ("idle_gpu_hours_while_waiting", "GPU-hours idle while pods waited"),
    ("horizon_s", "common horizon of the time-weighted measures (s)"),
    ("mean_allocated_pct", "GPUs allocated, time-weighted mean over the horizon (%)"),
    ("mean_running_pct", "GPUs running jobs, time-weighted mean over the horizon (%)"),
    ("mean_stranded_gpus", "GPUs stranded on partly used nodes, mean"),
    ("peak_stranded_gpus", "GPUs stranded, peak"),
    ("pods_placed", "pods placed"),
    ("pods_pending", "pods still pending"),
    ("pods_kept_off_by_disk_fit", "pods kept off a node whose disk was too small"),
    ("pods_placed_where_disk_short", "pods placed where their image or weights do not fit the disk"),
    ("gangs_whole", "gangs placed whole"),
    ("gangs_partly_placed", "gangs half placed (holding GPUs, not running)"),
    ("gangs_split_across_racks", "gangs split across racks"),
    ("gang_wait_mean_s", "gang wait, mean (s)"),
    ("cold_start_mean_s", "inference cold start, mean (s)"),
    ("cold_start_p95_s", "inference cold start, p95 (s)"),
    ("cold_start_total_s", "inference cold start, total (s)"),
)


def summarize(results: Sequence[PolicyResult]) -> list[dict[str, Any]]:
    """Each policy's summary, with time-weighted means over the longest run of them all."""
    horizon = max((r.end() for r in results), default=0.0)
    return [r.summary(horizon) for r in results]


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def print_comparison(results: Sequence[PolicyResult], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="What-if: policies compared")
    table.add_column("measure")
    for r in results:
        table.add_column(r.policy, justify="right")
    summaries = summarize(results)
    for key, label in ROWS:
        table.add_row(label, *(_show(s[key]) for s in summaries))
    console.print(table)
    for line in disk_lines(results):
        console.print(line)
    for s in summaries:
        if s["pending_reasons"]:
            console.print(f"[bold]{s['policy']}[/bold] pending pods, by reason:")
            for reason, n in s["pending_reasons"].items():
                console.print(f"  {n} x {reason}")


def disk_lines(results: Sequence[PolicyResult], examples: int = 3) -> list[str]:
    """Pods that disk-fit kept off nodes, and pods placed where their bytes do not fit, with examples."""
    lines = []
    for r in results:
        kept = [p for p in r.pods if p.kept_off]
        if kept:
            lines.append(f"{r.policy}: disk-fit kept {len(kept)} pod(s) off nodes whose disks are too small, e.g.")
            for p in kept[:examples]:
                node, reason = next(iter(p.kept_off.items()))
                more = f" (and {len(p.kept_off) - 1} more nodes)" if len(p.kept_off) > 1 else ""
                lines.append(f"  {p.name} kept off {node}{more}: {reason}; placed on {p.node or '(pending)'}")
        short = [p for p in r.pods if p.disk_short]
        if short:
            lines.append(f"{r.policy}: {len(short)} pod(s) placed where what they must fetch does not fit, e.g.")
            lines += [f"  {p.name} on {p.node}: {p.disk_short}" for p in short[:examples]]
    return lines


def print_gangs(results: Sequence[PolicyResult], console: Console | None = None) -> None:
    """Each training gang under each policy: members placed, racks spanned, the tier that holds it."""
    console = console or Console()
    if not any(r.gangs for r in results):
        return
    table = Table(title="Training gangs (members placed / racks / innermost tier that holds the gang)")
    table.add_column("gang")
    for r in results:
        table.add_column(r.policy, justify="right")
    names = list(dict.fromkeys(g.name for r in results for g in r.gangs))
    for name in names:
        row = []
        for r in results:
            g = next((g for g in r.gangs if g.name == name), None)
            row.append("-" if g is None else f"{g.placed}/{g.members}, {g.racks} rack(s), {g.span or '-'}")
        table.add_row(name, *row)
    console.print(table)


def print_placements(result: PolicyResult, console: Console | None = None, limit: int = 200) -> None:
    """Where each pod went and why: the winning node's per-plugin scores, or why it waits."""
    console = console or Console()
    table = Table(title=f"Placements under {result.policy}")
    for col in ("pod", "node", "cold start (s)", "why"):
        table.add_column(col)
    for pod in result.pods[:limit]:
        why = ", ".join(f"{k} {v:g}" for k, v in pod.scores.items()) if pod.node else pod.reason
        if pod.node and not pod.scores:
            why = "gang plan"
        cold = "-" if pod.cold_start_s is None else f"{pod.cold_start_s:.0f}"
        table.add_row(pod.name, pod.node or "(pending)", cold, why)
    console.print(table)


def write_report(results: Sequence[PolicyResult], folder: Path, scenario_name: str) -> list[Path]:
    """PNG plots and summary.md in `folder`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    horizon = max((r.end() for r in results), default=0.0)
    for key, index, ylabel, name in (
        ("allocation", 1, "GPUs allocated (%)", "allocation.png"),
        ("stranded", 2, "GPUs stranded on partly used nodes", "fragmentation.png"),
        ("pending", 3, "pods pending", "pending.png"),
        ("idle", 1, "GPUs idle while pods wait", "idle-while-waiting.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4))
        for r in results:
            # Every policy drawn to the same horizon: its last state holds until then.
            t = np.array([row[0] for row in r.timeline] + [horizon]) / 3600
            y = np.array([row[index] for row in r.timeline], dtype=float)
            if key == "allocation":
                y = 100 * y / max(r.total_gpus, 1)
            elif key == "idle":
                y = np.where(np.array([row[3] for row in r.timeline]) > 0, r.total_gpus - y, 0.0)
            ax.step(t, np.append(y, y[-1:]), where="post", label=r.policy)
        ax.set_xlim(0, horizon / 3600 or None)
        ax.set_xlabel("hours")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        cold = np.sort([p.cold_start_s for p in r.pods if p.kind == "inference" and p.cold_start_s is not None])
        if cold.size:
            ax.step(cold, np.arange(1, cold.size + 1) / cold.size, where="post", label=r.policy)
    ax.set_xlabel("predicted cold start (s)")
    ax.set_ylabel("share of inference pods")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "cold-start-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        jct = np.sort([j.completion_s for j in r.jobs if j.completion_s is not None]) / 3600
        if jct.size:
            ax.step(jct, np.arange(1, jct.size + 1) / jct.size, where="post", label=r.policy)
    ax.set_xlabel("job completion time, training and batch (hours)")
    ax.set_ylabel("share of finished jobs")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "jct-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    path = folder / "placements.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["policy", "pod", "job", "kind", "node", "gpus", "placed_at_s", "cold_start_s", "why"])
        for r in results:
            for pod in r.pods:
                why = "; ".join(f"{k} {v:g}" for k, v in pod.scores.items()) if pod.node else pod.reason
                out.writerow(
                    [
                        r.policy,
                        pod.name,
                        pod.job,
                        pod.kind,
                        pod.node or "",
                        pod.gpus,
                        pod.placed_at,
                        pod.cold_start_s,
                        why,
                    ]
                )
    written.append(path)

    summaries = summarize(results)
    lines = [
        f"# What-if: {scenario_name}",
        "",
        "| measure | " + " | ".join(s["policy"] for s in summaries) + " |",
        "| --- |" + " --- |" * len(summaries),
    ]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(_show(s[key]) for s in summaries) + " |")
    lines += [
        "",
        "Plots: allocation.png, fragmentation.png, pending.png, idle-while-waiting.png (to the common horizon),"
        " cold-start-cdf.png, jct-cdf.png; every pod: placements.csv.",
        "",
    ]
    if any(r.gangs for r in results):
        lines += [
            "## Training gangs",
            "",
            "| gang | " + " | ".join(r.policy for r in results) + " |",
            "| --- |" + " --- |" * len(results),
        ]
        for name in dict.fromkeys(g.name for r in results for g in r.gangs):
            cells = []
            for r in results:
                g = next((g for g in r.gangs if g.name == name), None)
                cells.append("-" if g is None else f"{g.placed}/{g.members} placed, {g.racks} rack(s), {g.span or '-'}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if disk := disk_lines(results):
        lines += ["## Disk fit", "", "```", *disk, "```", ""]
    for s in summaries:
        if s["pending_reasons"]:
            lines.append(f"## Pending under {s['policy']}")
            lines += [f"- {n} x {reason}" for reason, n in s["pending_reasons"].items()]
    path = folder / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    written.append(path)
    return written
