"""Plugin names -> classes, and building a Framework from a validated config.

Later plugins (gang planner, cold-start, LoRA, fragmentation) register here under their names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scheduler.core.config import SchedulerConfig, load_config
from scheduler.core.framework import FilterPlugin, Framework, Plugin, PreFilterPlugin, ScorePlugin
from scheduler.plugins.best_fit import BestFit
from scheduler.plugins.cold_start import ColdStart
from scheduler.plugins.cuda import CudaDriver
from scheduler.plugins.dot_product import DotProduct
from scheduler.plugins.fgd import Fgd
from scheduler.plugins.fragmentation import Fragmentation
from scheduler.plugins.freshness import Freshness
from scheduler.plugins.gpu_clustering import GpuClustering
from scheduler.plugins.gpu_fit import GpuFit
from scheduler.plugins.gpu_memory_packing import GpuMemoryPacking
from scheduler.plugins.gpu_packing import GpuPacking
from scheduler.plugins.image_locality import ImageLocality
from scheduler.plugins.inference_fit import InferenceFit
from scheduler.plugins.least_allocated import LeastAllocated
from scheduler.plugins.locality import Locality
from scheduler.plugins.lora import Lora
from scheduler.plugins.nvlink import NvLink
from scheduler.plugins.random_pick import RandomPick
from scheduler.plugins.resources_fit import ResourcesFit

PLUGINS: dict[str, type[Plugin]] = {
    cls.name: cls
    for cls in (
        GpuFit,
        CudaDriver,
        Freshness,
        GpuMemoryPacking,
        NvLink,
        Locality,
        # LLM inference: readiness time, LoRA base model, replica memory and spreading.
        ColdStart,
        Lora,
        InferenceFit,
        # The simulator's policies and kube-scheduler stand-ins (usable by the extender too).
        ResourcesFit,
        Fragmentation,
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


def register(cls: type[Plugin]) -> type[Plugin]:
    """Add a plugin class under its name (usable as a decorator)."""
    PLUGINS[cls.name] = cls
    return cls


def known() -> tuple[set[str], set[str]]:
    filters = {n for n, c in PLUGINS.items() if issubclass(c, FilterPlugin)}
    scores = {n for n, c in PLUGINS.items() if issubclass(c, ScorePlugin)}
    return filters, scores


def config_from(data: Mapping[str, Any] | None) -> SchedulerConfig:
    filters, scores = known()
    return load_config(data, filters, scores)


def build(config: SchedulerConfig, prefilters: tuple[PreFilterPlugin, ...] = ()) -> Framework:
    """A Framework running the config's plugins; one instance per plugin name."""
    instances: dict[str, Plugin] = {}

    def get(name: str) -> Plugin:
        if name not in instances:
            instances[name] = PLUGINS[name](config.plugin_args.get(name, {}), config)
        return instances[name]

    filters = [p for p in (get(n) for n in config.filters) if isinstance(p, FilterPlugin)]
    scores = [(p, w) for p, w in ((get(n), w) for n, w in config.scores) if isinstance(p, ScorePlugin)]
    return Framework(config, prefilters, filters, scores)
