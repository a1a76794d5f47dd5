"""Validated scheduler configuration: which plugins run, their weights and arguments.

The file format (YAML or JSON, keys in camelCase like Kubernetes' own configs):

    gpuResource: nvidia.com/gpu
    reportTTLSeconds: 90
    informerGraceSeconds: 30   # how long a view may fail to refresh before gpusched stops deciding
    # node label keys, outermost first; the default reads the zone, Topograph's, GKE's, the NVLink
    # clique and the hostname labels (scheduler/core/topology.py)
    topologyTiers: [example.com/pod, example.com/rack, kubernetes.io/hostname]
    plugins:
      filter: [gpu-fit, cuda, freshness]
      score:
        - {name: gpu-memory-packing, weight: 2}
    pluginArgs:
      freshness: {scoreMissing: 0}
    gang:
      reservationTTLSeconds: 120   # how long a gang's GPUs are held for members not yet bound
      maxSpanTier: example.com/rack  # outermost tier a gang may span (default: the whole cluster)

A score plugin without a positive weight, an unknown plugin, an unknown key or a malformed value is
a start-up error that names the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from scheduler.core.topology import DEFAULT_TIERS


class ConfigError(ValueError):
    """A configuration that gpusched refuses to start with."""


DEFAULT_FILTERS = ("gpu-fit", "cuda", "freshness", "inference-fit", "disk-fit")
DEFAULT_SCORES: tuple[tuple[str, float], ...] = (
    ("gpu-memory-packing", 2.0),
    ("nvlink", 3.0),
    ("locality", 1.0),
    ("cold-start", 3.0),
    ("lora", 2.0),
    ("inference-fit", 1.0),
    ("freshness", 1.0),
    ("fragmentation", 4.0),
)
# Args of the default policy. fragmentation measures directly what gpu-memory-packing's node-count
# term stands in for (pack busy nodes, keep whole ones free), and the two together pack too hard
# (`gpusched-sim fgd-table`), so the default policy keeps only gpu-memory-packing's memory fit.
DEFAULT_PLUGIN_ARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"gpu-memory-packing": MappingProxyType({"countWeight": 0.0})}
)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    gpu_resource: str = "nvidia.com/gpu"
    report_ttl_s: float = 90.0
    tiers: tuple[str, ...] = DEFAULT_TIERS
    filters: tuple[str, ...] = DEFAULT_FILTERS
    scores: tuple[tuple[str, float], ...] = DEFAULT_SCORES
    plugin_args: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: DEFAULT_PLUGIN_ARGS)
    gang_ttl_s: float = 120.0
    gang_max_span: str | None = None
    # Seconds an informer may keep failing (reconnecting, relisting) before its view counts as
    # stale: /readyz answers 503 and the verbs answer Error until it lists again.
    informer_grace_s: float = 30.0

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.scores)


_TOP_KEYS = {
    "gpuResource",
    "reportTTLSeconds",
    "informerGraceSeconds",
    "topologyTiers",
    "plugins",
    "pluginArgs",
    "gang",
}


def load_config(data: Mapping[str, Any] | None, known_filters: set[str], known_scores: set[str]) -> SchedulerConfig:
    """Build and validate a config from its parsed file; `None` gives the defaults."""
    data = dict(data or {})
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    gpu_resource = data.get("gpuResource", "nvidia.com/gpu")
    if not isinstance(gpu_resource, str) or not gpu_resource:
        raise ConfigError("gpuResource must be a resource name such as nvidia.com/gpu")
    ttl = data.get("reportTTLSeconds", 90)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
        raise ConfigError("reportTTLSeconds must be a positive number")
    grace = data.get("informerGraceSeconds", 30)
    if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 <= grace < float("inf"):
        raise ConfigError(f"informerGraceSeconds must be a number of seconds, 0 or more, not {grace!r}")
    tiers = data.get("topologyTiers", list(DEFAULT_TIERS))
    if not isinstance(tiers, list) or not all(isinstance(t, str) and t for t in tiers):
        raise ConfigError("topologyTiers must be a list of node label keys, outermost first")

    plugins = data.get("plugins") or {}
    if not isinstance(plugins, Mapping) or set(plugins) - {"filter", "score"}:
        raise ConfigError("plugins must be a mapping with the keys filter and score")
    filters = tuple(plugins.get("filter", DEFAULT_FILTERS))
    for name in filters:
        if name not in known_filters:
            raise ConfigError(
                f"plugins.filter: unknown filter plugin {name!r} (known: {', '.join(sorted(known_filters))})"
            )
    scores: list[tuple[str, float]] = []
    raw_scores = plugins.get("score")
    if raw_scores is None:
        scores = list(DEFAULT_SCORES)
    else:
        if not isinstance(raw_scores, list):
            raise ConfigError("plugins.score must be a list of {name, weight}")
        for entry in raw_scores:
            name = entry.get("name") if isinstance(entry, Mapping) else entry
            if name not in known_scores:
                raise ConfigError(
                    f"plugins.score: unknown score plugin {name!r} (known: {', '.join(sorted(known_scores))})"
                )
            weight = entry.get("weight") if isinstance(entry, Mapping) else None
            if weight is None:
                raise ConfigError(f"plugins.score: {name} has no weight")
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                raise ConfigError(f"plugins.score: {name} weight must be a positive number, not {weight!r}")
            scores.append((name, float(weight)))
    if len({n for n, _ in scores}) != len(scores):
        raise ConfigError("plugins.score names a plugin twice")

    args = data.get("pluginArgs") or {}
    if not isinstance(args, Mapping) or not all(isinstance(v, Mapping) for v in args.values()):
        raise ConfigError("pluginArgs must map plugin names to mappings")
    for name in args:
        if name not in known_filters | known_scores:
            raise ConfigError(f"pluginArgs: unknown plugin {name!r}")
    gang = data.get("gang") or {}
    if not isinstance(gang, Mapping) or set(gang) - {"reservationTTLSeconds", "maxSpanTier"}:
        raise ConfigError("gang takes reservationTTLSeconds and maxSpanTier")
    gang_ttl = gang.get("reservationTTLSeconds", 120)
    if not isinstance(gang_ttl, int | float) or isinstance(gang_ttl, bool) or gang_ttl <= 0:
        raise ConfigError("gang.reservationTTLSeconds must be a positive number")
    max_span = gang.get("maxSpanTier")
    if max_span is not None and max_span not in tiers:
        raise ConfigError(f"gang.maxSpanTier {max_span!r} is not one of topologyTiers")
    return SchedulerConfig(
        gpu_resource=gpu_resource,
        report_ttl_s=float(ttl),
        tiers=tuple(tiers),
        filters=filters,
        scores=tuple(scores),
        plugin_args=MappingProxyType(
            {
                **(DEFAULT_PLUGIN_ARGS if raw_scores is None else {}),  # the default policy's args, unless given
                **{k: MappingProxyType(dict(v)) for k, v in args.items()},
            }
        ),
        gang_ttl_s=float(gang_ttl),
        gang_max_span=max_span,
        informer_grace_s=float(grace),
    )
