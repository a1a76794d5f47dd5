"""Plugin names -> classes, beside the plugins (as kube-scheduler's plugins/registry.go).

The framework (scheduler/core) never imports a plugin: the extender and the simulator ask this
registry to check a config and to build a Framework from it. A new plugin is one module in this
package, one line in PLUGINS and one test module (docs/ARCHITECTURE.md, "Adding a plugin").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scheduler.core.config import SchedulerConfig, load_config
from scheduler.core.framework import FilterPlugin, Framework, Plugin, PreFilterPlugin, ScorePlugin
from scheduler.plugins.baselines.best_fit import BestFit
from scheduler.plugins.baselines.dot_product import DotProduct
from scheduler.plugins.baselines.fgd import Fgd
from scheduler.plugins.baselines.gpu_clustering import GpuClustering
from scheduler.plugins.baselines.gpu_packing import GpuPacking
from scheduler.plugins.baselines.image_locality import ImageLocality
from scheduler.plugins.baselines.least_allocated import LeastAllocated
from scheduler.plugins.baselines.random_pick import RandomPick
from scheduler.plugins.baselines.resources_fit import ResourcesFit
from scheduler.plugins.cold_start import ColdStart
from scheduler.plugins.cuda import CudaDriver
from scheduler.plugins.disk_fit import DiskFit
from scheduler.plugins.fragmentation import Fragmentation
from scheduler.plugins.freshness import Freshness
from scheduler.plugins.gpu_fit import GpuFit
from scheduler.plugins.gpu_memory_packing import GpuMemoryPacking
from scheduler.plugins.inference_fit import InferenceFit
from scheduler.plugins.locality import Locality
from scheduler.plugins.lora import Lora
from scheduler.plugins.nvlink import NvLink

PLUGINS: dict[str, type[Plugin]] = {
    cls.name: cls
    for cls in (
        # gpusched's own signals: its default policy is made of these.
        GpuFit,
        CudaDriver,
        DiskFit,
        Freshness,
        GpuMemoryPacking,
        NvLink,
        Locality,
        ColdStart,
        Lora,
        InferenceFit,
        Fragmentation,
        # Baselines: the FGD paper's trace policies and kube-scheduler stand-ins.
        ResourcesFit,
        Fgd,
        RandomPick,
        BestFit,
        DotProduct,
        GpuPacking,
        GpuClustering,
        LeastAllocated,
        ImageLocality,
    )
}


def known() -> tuple[set[str], set[str]]:
    filters = {n for n, c in PLUGINS.items() if issubclass(c, FilterPlugin)}
    scores = {n for n, c in PLUGINS.items() if issubclass(c, ScorePlugin)}
    return filters, scores


def config_from(data: Mapping[str, Any] | None) -> SchedulerConfig:
    """A validated config: names, weights, and every plugin's arguments checked against its Args."""
    filters, scores = known()
    config = load_config(data, filters, scores)
    for name, raw in config.plugin_args.items():
        PLUGINS[name].parse(raw)
    return config


def build(config: SchedulerConfig, prefilters: tuple[PreFilterPlugin, ...] = ()) -> Framework:
    """A Framework running the config's plugins; one instance per plugin name."""
    instances: dict[str, Plugin] = {}

    def get(name: str) -> Plugin:
        if name not in instances:
            cls = PLUGINS[name]
            instances[name] = cls(cls.parse(config.plugin_args.get(name)), config)
        return instances[name]

    filters = [p for p in (get(n) for n in config.filters) if isinstance(p, FilterPlugin)]
    scores = [(p, w) for p, w in ((get(n), w) for n, w in config.scores) if isinstance(p, ScorePlugin)]
    return Framework(config, prefilters, filters, scores)
