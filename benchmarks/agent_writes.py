"""API writes per second and bytes per second that N GPU-node agents cause, before and after Leases.

Every node runs the real report builder (``gpu_agent.report.build_report``, from a fake-NVML
dgx-h100 sample) every ``--interval`` seconds of simulated time, with utilisation changing on
every sample and a pod starting or ending on a node about every ``--pod-churn`` seconds. Two
publishers see the same stream of reports:

- **before**: the rule the agent had (whole report written when its material digest changed, and
  otherwise on every 30 s heartbeat, at most one write per 5 s), measured here in the same run;
- **after**: ``gpu_agent.publisher.Publisher`` as the agent runs it (report written when its
  content changes, volatile-only changes every ``--refresh`` s, a Lease renewed every 30 s), into
  ``MemorySink``, which counts the JSON bytes each call would send.

Profiles: ``bare`` (no inventory, about 5 KB) and ``full`` (200 images, 50 model revisions and 20
adapters, about 90 KB as in the audit). It also builds the largest report the bounds allow (every
list full of longest-allowed names) and prints its size. Prints a table, or JSON with ``--json``;
never asserts anything.

    .venv/bin/python benchmarks/agent_writes.py [--nodes 5000] [--duration 600] [--json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_agent import fake_nvml
from gpu_agent.cri.client import ImageEntry
from gpu_agent.inventory import CacheScan, LoraEntry, ModelEntry
from gpu_agent.nvml_reader import NvmlReader, NvmlSample
from gpu_agent.publisher import MemorySink, Publisher
from gpu_agent.report import (
    MAX_ADAPTERS,
    MAX_IMAGES,
    MAX_MODELS,
    MAX_TEXT,
    Images,
    build_report,
    material,
    size,
)

EPOCH = _dt.datetime(2026, 11, 30, tzinfo=_dt.UTC)


class LegacyPublisher:
    """The write rule before Leases, kept here as the baseline: material change or heartbeat."""

    def __init__(self, heartbeat: float = 30.0, min_interval: float = 5.0) -> None:
        self.heartbeat = heartbeat
        self.min_interval = min_interval
        self.writes = 0
        self.bytes = 0
        self._pending: Mapping[str, Any] | None = None
        self._digest = ""
        self._written_digest: str | None = None
        self._written = False
        self._last: float | None = None

    def offer(self, report: Mapping[str, Any]) -> None:
        self._pending, self._digest, self._written = report, material(report), False

    def publish_if_due(self, now: float) -> None:
        if self._pending is None or self._written:
            return
        if self._last is not None and now < self._last + self.min_interval:
            return
        if self._written_digest == self._digest and self._last is not None and now < self._last + self.heartbeat:
            return
        self.writes += 1
        self.bytes += size(self._pending)
        self._written, self._written_digest, self._last = True, self._digest, now


def inventory(profile: str) -> tuple[Images | None, CacheScan | None]:
    if profile == "bare":
        return None, None
    images = [
        ImageEntry(
            f"registry.example.com/team-{i % 17}/serving-image-{i}:v1.{i}", f"sha256:{i:064x}", 10**9 + i, str(i)
        )
        for i in range(200)
    ]
    models = tuple(ModelEntry(f"org-{i % 9}/model-{i}@{i:040x}", 10**10 + i) for i in range(50))
    adapters = tuple(LoraEntry(f"acme/adapter-{i}@{i:040x}", f"org-{i % 9}/model-{i}", 10**8) for i in range(20))
    return Images(images, sum(e.bytes for e in images)), CacheScan(models, adapters)


def largest_report(sample: NvmlSample) -> int:
    """Bytes of the largest report the bounds allow: every list full, every name at MAX_TEXT."""
    long = "x" * MAX_TEXT
    images = [ImageEntry(f"{i:08d}{long}"[:MAX_TEXT], long, 2**62, str(i)) for i in range(MAX_IMAGES * 2)]
    models = tuple(ModelEntry(f"{i:08d}{long}"[:MAX_TEXT], 2**62) for i in range(MAX_MODELS * 2))
    adapters = tuple(LoraEntry(f"{i:08d}{long}"[:MAX_TEXT], long, 2**62) for i in range(MAX_ADAPTERS * 2))
    report = build_report(
        long,
        sample,
        report_time=EPOCH,
        pods={g.index: tuple(f"ns-{k}/{long[:200]}" for k in range(8)) for g in sample.gpus},
        images=Images(images, 0),
        caches=CacheScan(models, adapters),
    )
    return size(report)


def run(sample: NvmlSample, profile: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    images, caches = inventory(profile)
    legacy = [LegacyPublisher() for _ in range(args.nodes)]
    sink = MemorySink(node_uids={f"node-{i}": f"uid-{i}" for i in range(args.nodes)})
    clock = [0.0]
    sink.clock = lambda: clock[0]
    after = [
        Publisher(
            sink,
            heartbeat=30,
            refresh=args.refresh,
            min_interval=5,
            clock=lambda: clock[0],
            wall_clock=lambda: EPOCH.timestamp() + clock[0],
        )
        for _ in range(args.nodes)
    ]
    pods: list[dict[int, tuple[str, ...]]] = [{} for _ in range(args.nodes)]
    steps = int(args.duration / args.interval)
    warmup = int(60 / args.interval)  # the first writes of every node are left out of the rates
    counted_legacy = [0, 0]
    counted_after = [0, 0]
    for step in range(steps + warmup):
        clock[0] = step * args.interval
        if step == warmup:
            counted_legacy = [sum(p.writes for p in legacy), sum(p.bytes for p in legacy)]
            counted_after = [len(sink.reports) + len(sink.leases), sink.bytes_written]
        for node in range(args.nodes):
            if rng.random() < args.interval / args.pod_churn:
                gpu = rng.randrange(len(sample.gpus))
                pods[node][gpu] = () if pods[node].get(gpu) else (f"team/job-{step}-{node}",)
            util = tuple(replace(g, utilization=rng.randrange(101)) for g in sample.gpus)
            report = build_report(
                f"node-{node}",
                replace(sample, gpus=util),
                report_time=EPOCH + _dt.timedelta(seconds=clock[0]),
                pods=pods[node],
                images=images,
                caches=caches,
            )
            legacy[node].offer(report)
            legacy[node].publish_if_due(clock[0])
            after[node].offer(report)
            after[node].publish_if_due(clock[0])
    seconds = steps * args.interval
    before_writes = sum(p.writes for p in legacy) - counted_legacy[0]
    before_bytes = sum(p.bytes for p in legacy) - counted_legacy[1]
    lease_writes = sum(1 for t, _ in sink.leases if t >= warmup * args.interval)
    report_writes = sum(1 for t, _ in sink.reports if t >= warmup * args.interval)
    after_bytes = sink.bytes_written - counted_after[1]
    return {
        "profile": profile,
        "nodes": args.nodes,
        "seconds": seconds,
        "report_bytes": size(report),
        "before": {"writes_per_s": before_writes / seconds, "bytes_per_s": before_bytes / seconds},
        "after": {
            "writes_per_s": (lease_writes + report_writes) / seconds,
            "report_writes_per_s": report_writes / seconds,
            "lease_writes_per_s": lease_writes / seconds,
            "bytes_per_s": after_bytes / seconds,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=600, help="simulated seconds measured (after 60 s warm-up)")
    parser.add_argument("--interval", type=float, default=10, help="sampling period of each agent")
    parser.add_argument("--pod-churn", type=float, default=600, help="mean seconds between pod changes per node")
    parser.add_argument("--refresh", type=float, default=300)
    parser.add_argument("--profiles", default="bare,full")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    fake_nvml.activate("dgx-h100")
    with NvmlReader() as reader:
        sample = reader.read()
    results = [run(sample, p.strip(), args) for p in args.profiles.split(",") if p.strip()]
    largest = largest_report(sample)
    if args.json:
        print(json.dumps({"results": results, "largest_report_bytes": largest}, indent=2))
        return 0
    print(f"{args.nodes} nodes, {args.duration:.0f} s simulated, sample every {args.interval:.0f} s")
    print(f"{'profile':8} {'report':>9} {'':6} {'writes/s':>9} {'bytes/s':>12}")
    for r in results:
        for when in ("before", "after"):
            m = r[when]
            rate, volume = m["writes_per_s"], m["bytes_per_s"]
            print(f"{r['profile']:8} {r['report_bytes']:>8}B {when:6} {rate:>9.1f} {volume:>12,.0f}")
        a = r["after"]
        print(
            f"{'':8} {'':9} {'':6} (reports {a['report_writes_per_s']:.1f}/s, Leases {a['lease_writes_per_s']:.1f}/s)"
        )
    print(f"largest report the bounds allow: {largest:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
