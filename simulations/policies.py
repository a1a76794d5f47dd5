"""Named placement policies: each is a registry config of core plugins, nothing more.

Every policy the simulator replays is built by `scheduler.core.registry` from the config returned
here, so the scores come from the same plugins the extender runs. kube-scheduler's own filters are
stood in for by `resources-fit` (CPU and memory), added to every policy; `gpu-fit` stands in for the
node selectors that pin GPU models and sizes in a cluster without gpusched.

    kube-default   least-allocated + image-locality (kube-scheduler's default scoring, weight 1 each)
    random         random                      the FGD paper's baselines, integer scores, first node
    dotprod        dot-product                 in snapshot order wins ties
    gpuclustering  gpu-clustering
    gpupacking     gpu-packing
    bestfit        best-fit
    fgd            fgd                         FGD as published
    gpusched       gpusched's default config and its args (DEFAULT_SCORES, DEFAULT_PLUGIN_ARGS in
                   scheduler/core/config.py), fragmentation included
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.core.config import DEFAULT_FILTERS, DEFAULT_PLUGIN_ARGS, DEFAULT_SCORES, ConfigError
from scheduler.core.fragmentation import TypicalPod

TRACE_FILTERS = ["gpu-fit", "resources-fit"]

_SINGLE = {
    "random": "random",
    "dotprod": "dot-product",
    "gpuclustering": "gpu-clustering",
    "gpupacking": "gpu-packing",
    "bestfit": "best-fit",
    "fgd": "fgd",
}
DISPLAY = {
    "kube-default": "kube-default",
    "random": "Random",
    "dotprod": "DotProd",
    "gpuclustering": "GpuClustering",
    "gpupacking": "GpuPacking",
    "bestfit": "BestFit",
    "fgd": "FGD",
    "gpusched": "gpusched",
}
POLICIES = tuple(DISPLAY)
TRACE_POLICIES = ("random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd", "gpusched")
_ALIASES = {
    "kube": "kube-default",
    "default": "kube-default",
    "kubedefault": "kube-default",
    "dot-product": "dotprod",
    "gpu-clustering": "gpuclustering",
    "gpu-packing": "gpupacking",
    "best-fit": "bestfit",
}


def canonical(name: str) -> str:
    """A policy name as the user typed it (any case, Random / DotProd / ...) -> its canonical name."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DISPLAY:
        raise ConfigError(f"unknown policy {name!r} (known: {', '.join(DISPLAY.values())})")
    return key


def typical_args(pods: Sequence[TypicalPod]) -> list[dict[str, Any]]:
    return [
        {"cpu": p.cpu_milli, "gpus": p.gpus, "gpuMilli": p.milli, "models": list(p.models), "weight": p.weight}
        for p in pods
    ]


def policy_config(
    name: str,
    *,
    seed: int = 0,
    typical: Sequence[TypicalPod] | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The registry config (the YAML schema of scheduler/core/config.py) of a named policy.

    `typical` feeds the fragmentation plugins the workload's typical pods; `weights` sets or adds
    score plugins (plugin name -> weight) on top of the policy's own.
    """
    key = canonical(name)
    args: dict[str, dict[str, Any]] = {}
    if key == "kube-default":
        filters = list(TRACE_FILTERS)
        scores = [("least-allocated", 1.0), ("image-locality", 1.0)]
    elif key == "gpusched":
        filters = [*DEFAULT_FILTERS, "resources-fit"]
        scores = list(DEFAULT_SCORES)
        args.update({name: dict(values) for name, values in DEFAULT_PLUGIN_ARGS.items()})
    else:
        filters = list(TRACE_FILTERS)
        scores = [(_SINGLE[key], 1.0)]
    merged = dict(scores)
    merged.update(weights or {})
    if "random" in merged:
        args["random"] = {"seed": seed}
    if typical is not None:
        for plugin in ("fgd", "fragmentation"):
            if plugin in merged:
                args[plugin] = {"typicalPods": typical_args(typical)}
    return {
        "plugins": {"filter": filters, "score": [{"name": n, "weight": w} for n, w in merged.items()]},
        "pluginArgs": args,
    }
