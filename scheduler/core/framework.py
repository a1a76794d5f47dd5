"""The fixed pipeline: prefilter -> filter -> score -> normalise -> weight -> sum.

Every plugin sees the whole candidate set as arrays; per-node Python work happens only to word the
reasons of nodes that a filter turned away. Each plugin's scores are kept on the Decision so that
every placement can be explained.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

import numpy as np

from scheduler.core import gpusets
from scheduler.core.args import PluginArgs, parse_args
from scheduler.core.config import SchedulerConfig
from scheduler.core.node_answers import NodeAnswers, ShapeAnswers, pod_shape
from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

MAX_SCORE = 100.0
SCORE_SLACK = 1e-6  # rounding in a plugin's float arithmetic, clipped without complaint
log = logging.getLogger(__name__)


class Cycle:
    """One pod's scheduling cycle: the inputs plus a memo of arrays several plugins share."""

    def __init__(self, snapshot: ClusterSnapshot, pod: PodRequest, config: SchedulerConfig) -> None:
        self.snapshot = snapshot
        self.pod = pod
        self.config = config
        self._sets: tuple[bytes, np.ndarray, np.ndarray] | None = None
        self._eligible: tuple[bytes, np.ndarray] | None = None
        self._every: np.ndarray | None = None  # eligible() of every node, once asked for most
        self._every_count: np.ndarray | None = None
        # Per-cycle values a plugin wants shown in /explain. A value may be a callable that
        # builds it: it is called only when the decision is explained, so that per-node notes
        # cost nothing on the extender's hot path.
        self.notes: dict[str, Any] = {}

    def note(self, key: str) -> Any:
        """The note under `key`, built if it was left as a callable."""
        return _resolved(self.notes[key])

    def eligible(self, nodes: np.ndarray) -> np.ndarray:
        """(len(nodes), G) mask of the GPUs that could serve the pod. Once asked for at least a
        quarter of the nodes it is built for every node and read from there; before that it is
        built for the nodes asked (memoised for the last ones)."""
        if self._every is None and nodes.size * 4 < len(self.snapshot):
            key = nodes.tobytes()
            if self._eligible is None or self._eligible[0] != key:
                self._eligible = (key, gpusets.eligible_gpus(self.snapshot, self.pod, nodes))
            return self._eligible[1]
        return self._every_node().take(nodes, axis=0)

    def eligible_count(self, nodes: np.ndarray) -> np.ndarray:
        """How many GPUs could serve the pod, per node of `nodes` (counted once for every node)."""
        if self._every is None and nodes.size * 4 < len(self.snapshot):
            return count_per_row(self.eligible(nodes))
        if self._every_count is None:
            self._every_count = count_per_row(self._every_node())
        return self._every_count[nodes]

    def _every_node(self) -> np.ndarray:
        if self._every is None:
            self._every = gpusets.eligible_gpus(self.snapshot, self.pod, None)
        return self._every

    def gpu_sets(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(set quality 0..1, -1 where none; chosen GPU indices) for the given nodes, memoised."""
        key = nodes.tobytes()
        if self._sets is None or self._sets[0] != key:
            quality, chosen = gpusets.best_sets(self.snapshot, self.pod, nodes, self.eligible(nodes))
            self._sets = (key, quality, chosen)
        return self._sets[1], self._sets[2]


def count_per_row(mask: np.ndarray) -> np.ndarray:
    """True values per row of an (N, G) boolean mask, as int64. Rows of 1, 2, 4 or 8 GPUs are read
    as one unsigned integer each and their bits counted: numpy sums short rows slowly (about 50 us
    for 1,000 rows of 8, against 1 us)."""
    g = mask.shape[1] if mask.ndim == 2 else 0
    if g in (1, 2, 4, 8) and mask.dtype == np.bool_ and mask.flags.c_contiguous:
        return np.bitwise_count(mask.view(f"u{g}")).reshape(-1).astype(np.int64)
    return mask.sum(axis=1, dtype=np.int64)


class Plugin:
    """Base of all plugins: a name, typed arguments (`Args`, parsed at start-up), the config."""

    name: ClassVar[str] = ""
    Args: ClassVar[type[PluginArgs]] = PluginArgs

    def __init__(self, args: PluginArgs, config: SchedulerConfig) -> None:
        self.config = config

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> PluginArgs:
        """The plugin's `pluginArgs` entry checked against `Args` (ConfigError naming the key)."""
        return parse_args(cls.name, cls.Args, raw)

    @classmethod
    def create(cls, raw: Mapping[str, Any] | None = None, config: SchedulerConfig | None = None) -> Self:
        """An instance from raw arguments, as the registry builds it."""
        return cls(cls.parse(raw), config or SchedulerConfig())


class PreFilterPlugin(Plugin, ABC):
    """Runs once per pod: may narrow the candidates (a gang's planned node) or refuse the pod."""

    @abstractmethod
    def prefilter(self, cycle: Cycle, nodes: np.ndarray) -> tuple[np.ndarray, str]:
        """(nodes still allowed, a pod-level reason when none are)."""


class FilterPlugin(Plugin, ABC):
    # Rejections that clear up by themselves (a report that is stale now): when no node fits and
    # such a rejection is among the reasons, the extender asks kube-scheduler to retry soon.
    transient: ClassVar[bool] = False
    # True when the plugin's verdict, reason and resolvability for a node depend only on the pod's
    # shape and that node's own rows: the framework may keep them (core/node_answers.py).
    filter_per_node: ClassVar[bool] = False

    @abstractmethod
    def filter(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """Boolean mask over `nodes`: True where the pod may go.

        A node's verdict may not depend on which other nodes are asked (kube-scheduler's Filter
        is called per node): the framework may ask about nodes an earlier filter turned away."""

    @abstractmethod
    def reason(self, cycle: Cycle, node: int) -> str:
        """Why the pod may not go to `node` (only asked for nodes this plugin turned away)."""

    def resolvable(self, cycle: Cycle, node: int) -> bool:
        """Whether evicting pods could let the pod onto `node` (kube-scheduler's preemption)."""
        return False

    def reasons(self, cycle: Cycle, nodes: np.ndarray) -> list[str]:
        """`reason` for each of `nodes` (all turned away by this plugin). Plugins that turn away
        many nodes at once override it to word each distinct situation once."""
        return [self.reason(cycle, int(node)) for node in nodes.tolist()]

    def resolvable_nodes(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """`resolvable` for each of `nodes`, as a boolean mask."""
        return np.array([self.resolvable(cycle, int(node)) for node in nodes.tolist()], dtype=bool)


class ScorePlugin(Plugin, ABC):
    # min-max normalise over the feasible nodes before weighting (for raw scores of no fixed scale)
    normalize: ClassVar[bool] = False
    # True when the plugin's raw score for a node depends only on the pod's shape and that node's
    # own rows: the framework may keep it (core/node_answers.py).
    score_per_node: ClassVar[bool] = False
    # True when the score is `score_from(node_values)`: values that depend only on the pod's shape
    # and each node's own rows, combined with something across the nodes (a minimum, replicas
    # elsewhere). The framework may keep the values (core/node_answers.py).
    values_per_node: ClassVar[bool] = False

    @abstractmethod
    def score(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """Scores over `nodes` in 0..100, higher is better."""

    def node_values(self, cycle: Cycle, nodes: np.ndarray) -> np.ndarray:
        """Per-node values of a plugin with `values_per_node` (float64, aligned with `nodes`)."""
        raise NotImplementedError

    def score_from(self, cycle: Cycle, nodes: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The score of a plugin with `values_per_node`, from its `node_values` for `nodes`."""
        raise NotImplementedError


class GpuChooser(ABC):
    """Mixed into a score plugin whose signal also decides which GPUs of the chosen node to use."""

    @abstractmethod
    def choose_gpus(self, cycle: Cycle, node: int) -> tuple[int, ...] | None:
        """The pod's GPUs on `node`, or None to leave the choice to the core's GPU sets."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """The nodes one filter plugin turned away, each with its reason.

    Reasons are kept as `codes` into `texts` (thousands of nodes share a handful of reasons), so
    that the extender words its answer once per reason rather than once per node."""

    plugin: str
    nodes: np.ndarray  # node indices
    codes: np.ndarray  # aligned with `nodes`: the node's reason, an index into `texts`
    texts: Sequence[str]
    resolvable: np.ndarray  # aligned with `nodes`: evicting pods could let the pod on
    transient: bool  # the plugin's rejections may clear by themselves (a report turning fresh)
    # grouped(), where the rejection was made grouped
    groups: Sequence[tuple[str, np.ndarray, bool]] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def worded(
        cls, plugin: str, nodes: np.ndarray, reasons: Sequence[str], resolvable: np.ndarray, transient: bool
    ) -> Rejection:
        texts = list(dict.fromkeys(reasons))
        code_of = {text: code for code, text in enumerate(texts)}
        codes = np.fromiter((code_of[r] for r in reasons), dtype=np.intp, count=len(reasons))
        return cls(plugin, nodes, codes, texts, resolvable, transient)

    @property
    def reasons(self) -> list[str]:
        """The reason of each node, aligned with `nodes`."""
        texts = self.texts
        return [texts[code] for code in self.codes.tolist()]

    def grouped(self) -> list[tuple[str, np.ndarray, bool]]:
        """(reason, its nodes, whether preemption may help there) for each reason and
        resolvability given: the extender answers each group once, into FailedNodes or
        FailedAndUnresolvableNodes."""
        if self.groups is not None:
            return list(self.groups)
        keys = 2 * self.codes + self.resolvable
        if not keys.size:
            return []
        low, high = int(keys.min()), int(keys.max())
        if low == high:  # one reason, alike everywhere (the usual case)
            return [(self.texts[low // 2], self.nodes, bool(low % 2))]
        if high < 2**16:  # a stable sort of 8- or 16-bit keys is a radix sort: linear
            keys = keys.astype(np.uint8 if high < 2**8 else np.uint16)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist()]
        ends = [*starts[1:], keys.size]
        nodes = self.nodes[order]
        return [
            (self.texts[int(keys[a]) // 2], nodes[a:b], bool(keys[a] % 2)) for a, b in zip(starts, ends, strict=True)
        ]


def _kept_rejection(
    plugin: FilterPlugin, kept: ShapeAnswers, parts: list[tuple[int, np.ndarray]], rejected: np.ndarray
) -> Rejection:
    """The rejection of `rejected` by a filter whose answers are kept: the nodes of each failure
    key of the plugin (`parts`, in order) one after another in `rejected`."""
    texts, codes, resolvable = kept.texts[plugin.name], kept.key_code, kept.key_resolvable
    groups, start = [], 0
    for key, part in parts:
        groups.append((texts[codes[key]], rejected[start : start + part.size], resolvable[key]))
        start += part.size
    sizes = [part.size for _, part in parts]
    return Rejection(
        plugin.name,
        rejected,
        np.repeat([codes[key] for key, _ in parts], sizes),
        texts,
        np.repeat(np.array([resolvable[key] for key, _ in parts], dtype=bool), sizes),
        plugin.transient,
        groups,
    )


def _rejection(plugin: FilterPlugin, cycle: Cycle, rejected: np.ndarray) -> Rejection:
    """The rejection of `rejected` by `plugin`, worded and judged now."""
    words = plugin.reasons(cycle, rejected)
    mask = np.asarray(plugin.resolvable_nodes(cycle, rejected), dtype=bool)
    return Rejection.worded(plugin.name, rejected, words, mask, plugin.transient)


@dataclass(slots=True)
class Decision:
    """The outcome of one cycle, with enough detail to explain it."""

    pod: PodRequest
    snapshot: ClusterSnapshot
    feasible: np.ndarray  # node indices that passed every filter
    total: np.ndarray  # weighted mean score 0..100, aligned with `feasible`
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per plugin, aligned with `feasible`
    rejections: list[Rejection] = field(default_factory=list)  # empty when decided with explain=False
    error: str = ""  # a pod-level refusal (malformed request, gang that cannot fit)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> dict[int, str]:
        """Node index -> why it was turned away."""
        return {n: r for rej in self.rejections for n, r in zip(rej.nodes.tolist(), rej.reasons, strict=True)}

    @property
    def rejected_by(self) -> dict[int, str]:
        """Node index -> the filter plugin that turned it away."""
        return {n: rej.plugin for rej in self.rejections for n in rej.nodes.tolist()}

    @property
    def resolvable(self) -> set[int]:
        """Rejected nodes that preemption could free."""
        return {n for rej in self.rejections for n in rej.nodes[rej.resolvable].tolist()}

    @property
    def transient(self) -> set[int]:
        """Rejected nodes that may pass again by themselves."""
        return {n for rej in self.rejections if rej.transient for n in rej.nodes.tolist()}

    def best(self) -> int | None:
        """The highest total; ties go to the node that comes first in the snapshot."""
        if self.feasible.size == 0:
            return None
        return int(self.feasible[int(self.total.argmax())])

    def ranked(self) -> list[tuple[str, float]]:
        order = np.lexsort((self.feasible, -self.total))
        return [(self.snapshot.names[self.feasible[i]], float(self.total[i])) for i in order]

    def explain(self) -> dict[str, Any]:
        names = self.snapshot.names
        nodes: dict[str, Any] = {}
        for pos, node in enumerate(self.feasible):
            nodes[names[node]] = {
                "feasible": True,
                "total": round(float(self.total[pos]), 3),
                "scores": {p: round(float(s[pos]), 3) for p, s in self.scores.items()},
            }
        for node, reason in self.reasons.items():
            nodes[names[node]] = {"feasible": False, "reason": reason}
        return {
            "pod": self.pod.key,
            "error": self.error,
            "best": _name(names, self.best()),
            "nodes": nodes,
            "notes": {key: _resolved(value) for key, value in self.notes.items()},
        }


def _resolved(value: Any) -> Any:
    return value() if callable(value) else value


def _name(names: Sequence[str], index: int | None) -> str | None:
    return None if index is None else names[index]


class Framework:
    """Runs a configured set of plugins over a snapshot for one pod."""

    def __init__(
        self,
        config: SchedulerConfig,
        prefilters: Sequence[PreFilterPlugin],
        filters: Sequence[FilterPlugin],
        scores: Sequence[tuple[ScorePlugin, float]],
    ) -> None:
        self.config = config
        self.prefilters = list(prefilters)
        self.filters = list(filters)
        self.scores = list(scores)
        self.weight_sum = sum(w for _, w in self.scores) or 1.0
        self.choosers = [plugin for plugin, _ in self.scores if isinstance(plugin, GpuChooser)]
        self.filters_per_node = [(at, plugin) for at, plugin in enumerate(self.filters) if plugin.filter_per_node]
        self.scores_per_node = [plugin for plugin, _ in self.scores if plugin.score_per_node]
        self.values_per_node = [plugin for plugin, _ in self.scores if plugin.values_per_node]
        # Score plugins that answered NaN, an infinity or a value outside 0..100: plugin -> nodes.
        self.bad_scores: Counter[str] = Counter()

    def decide(
        self,
        snapshot: ClusterSnapshot,
        pod: PodRequest,
        candidates: np.ndarray | None = None,
        on_filter: Callable[[str, int], None] | None = None,
        *,
        explain: bool = True,
        score: bool = True,
        reuse: bool = False,
    ) -> Decision:
        """Filter and score `candidates` (default: every node) for `pod`.

        `explain=False` skips wording a reason per turned-away node (reasons, rejected_by,
        resolvable and transient stay empty): the simulator's replay asks again with reasons only
        for pods that find no node. `score=False` stops after the filters (totals are all 0): the
        extender's filter verb needs no scores. `on_filter(plugin, count)` hears how many nodes
        each filter plugin turned away. `reuse=True` takes the answers of per-node plugins kept for
        the pod's shape where the node has not changed since (core/node_answers.py): the same
        decision, except that each of those filters lists its rejected nodes grouped by reason
        (each reason's in candidate order) and those plugins leave no notes for /explain.
        """
        nodes = np.arange(len(snapshot), dtype=np.intp) if candidates is None else np.asarray(candidates, np.intp)
        cycle = Cycle(snapshot, pod, self.config)
        empty = np.zeros(0, dtype=np.intp)
        if pod.errors:
            return Decision(pod, snapshot, empty, np.zeros(0), error="; ".join(pod.errors))
        for pre in self.prefilters:
            nodes, error = pre.prefilter(cycle, nodes)
            if error:
                return Decision(pod, snapshot, empty, np.zeros(0), error=error, notes=cycle.notes)
        kept = self._kept(snapshot, pod) if reuse else None
        rejections: list[Rejection] = []
        if kept is not None and nodes.size:
            kept.refresh_filters(snapshot, lambda: self._shaped(snapshot, pod), self.filters_per_node, nodes)
            nodes = self._filter_kept(cycle, nodes, kept, rejections, on_filter, explain)
        else:
            nodes = self._filter(cycle, nodes, rejections, on_filter, explain)
        scores, total = self._score(cycle, nodes, kept) if score else ({}, np.zeros(nodes.size))
        return Decision(pod, snapshot, nodes, total, scores, rejections, notes=cycle.notes)

    def _filter(
        self,
        cycle: Cycle,
        nodes: np.ndarray,
        rejections: list[Rejection],
        on_filter: Callable[[str, int], None] | None,
        explain: bool,
    ) -> np.ndarray:
        """Every filter in order, each over the nodes the ones before it let through."""
        for plugin in self.filters:
            if nodes.size == 0:
                break
            ok = np.asarray(plugin.filter(cycle, nodes), dtype=bool)
            if ok.all():
                continue
            if on_filter is not None:
                on_filter(plugin.name, int(ok.size - np.count_nonzero(ok)))
            if explain:
                rejections.append(_rejection(plugin, cycle, nodes[~ok]))
            nodes = nodes[ok]
        return nodes

    def _filter_kept(
        self,
        cycle: Cycle,
        nodes: np.ndarray,
        kept: ShapeAnswers,
        rejections: list[Rejection],
        on_filter: Callable[[str, int], None] | None,
        explain: bool,
    ) -> np.ndarray:
        """As `_filter`, with the per-node filters' answers read from `kept`: a node is turned away
        by the first filter, in order, that turns it away, whether its answer was kept or is asked
        now (over every candidate: a verdict does not depend on the other nodes).

        The candidates are sorted once by failure key (a radix sort while keys are small): the
        feasible nodes and each reason's nodes come out together, each in candidate order."""
        keys = kept.fail_key[nodes]
        for position, plugin in enumerate(self.filters):
            if not plugin.filter_per_node:
                ok = np.asarray(plugin.filter(cycle, nodes), dtype=bool)
                if not ok.all():
                    later = kept.positions()[keys] > position  # no filter before this one turned it away
                    key = kept.key(position, -1, False)  # made first: it may widen the keys
                    keys = keys.astype(kept.fail_key.dtype, copy=False)
                    keys = np.where(~ok & later, keys.dtype.type(key), keys)
        if not keys.any():
            return nodes
        order = np.argsort(keys, kind="stable")  # a radix sort of 8- and 16-bit keys
        ordered = keys[order]
        cuts = (np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist()
        grouped = nodes[order]
        feasible = grouped[:0]
        by_position: dict[int, list[tuple[int, np.ndarray]]] = {}
        for start, end in zip([0, *cuts], [*cuts, grouped.size], strict=True):
            key = int(ordered[start])
            if key:
                by_position.setdefault(kept.key_position[key], []).append((key, grouped[start:end]))
            else:
                feasible = grouped[start:end]
        for position in sorted(by_position):
            plugin, parts = self.filters[position], by_position[position]
            if on_filter is not None:
                on_filter(plugin.name, sum(part.size for _, part in parts))
            if not explain:
                continue
            rejected = parts[0][1] if len(parts) == 1 else np.concatenate([part for _, part in parts])
            if plugin.filter_per_node:
                rejections.append(_kept_rejection(plugin, kept, parts, rejected))
            else:
                rejections.append(_rejection(plugin, cycle, rejected))
        return feasible

    def _kept(self, snapshot: ClusterSnapshot, pod: PodRequest) -> ShapeAnswers | None:
        if not (self.filters_per_node or self.scores_per_node or self.values_per_node):
            return None
        return NodeAnswers.of(snapshot, self).shape(snapshot, pod)

    def _shaped(self, snapshot: ClusterSnapshot, pod: PodRequest) -> Cycle:
        """A cycle for per-node plugins: they see the pod's shape only."""
        return Cycle(snapshot, pod_shape(pod), self.config)

    def score_feasible(
        self, snapshot: ClusterSnapshot, pod: PodRequest, feasible: np.ndarray, *, reuse: bool = False
    ) -> Decision:
        """Score nodes already known to pass every filter for this pod in this very state (the
        extender's prioritize right after its filter): the filters are not run again."""
        cycle = Cycle(snapshot, pod, self.config)
        nodes = np.asarray(feasible, dtype=np.intp)
        scores, total = self._score(cycle, nodes, self._kept(snapshot, pod) if reuse else None)
        return Decision(pod, snapshot, nodes, total, scores, notes=cycle.notes)

    def _score(
        self, cycle: Cycle, nodes: np.ndarray, kept: ShapeAnswers | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        scores: dict[str, np.ndarray] = {}
        total = np.zeros(nodes.size)
        if nodes.size:
            if kept is not None:
                snapshot, pod = cycle.snapshot, cycle.pod
                shaped = lambda: self._shaped(snapshot, pod)  # noqa: E731
                checked = lambda plugin, raw: self._checked(plugin, cycle, raw)  # noqa: E731  (names the pod)
                kept.refresh_scores(snapshot, shaped, self.scores_per_node, self.values_per_node, nodes, checked)
            for scorer, weight in self.scores:
                if kept is not None and scorer.score_per_node:
                    raw = kept.scores[scorer.name][nodes]
                elif kept is not None and scorer.values_per_node:
                    values = kept.values[scorer.name][nodes]
                    raw = self._checked(scorer, cycle, np.asarray(scorer.score_from(cycle, nodes, values), np.float64))
                else:
                    raw = self._checked(scorer, cycle, np.asarray(scorer.score(cycle, nodes), dtype=np.float64))
                if scorer.normalize:
                    raw = minmax(raw)
                scores[scorer.name] = raw
                total += weight * raw
            total /= self.weight_sum
        return scores, total

    def place_best(
        self, snapshot: ClusterSnapshot, pod: PodRequest, *, explain: bool = False
    ) -> tuple[Decision, int | None, tuple[int, ...]]:
        """The simulator's step: decide, take the best node, choose its GPUs, place the pod there.

        Returns (decision, node or None, GPUs). When no node fits (or the chosen node's GPUs fall
        short), nothing is placed and the node is None. The extender does not use this: it answers
        kube-scheduler and binds, and the informer records the placement.
        """
        decision = self.decide(snapshot, pod, explain=explain)
        best = decision.best()
        if best is None:
            return decision, None, ()
        gpus = self.choose_gpus(snapshot, pod, best)
        if len(gpus) != pod.gpus_needed:
            return decision, None, ()
        snapshot.place(replace(pod, node_name=snapshot.names[best]), best, gpus)
        return decision, best, gpus

    def _checked(self, scorer: ScorePlugin, cycle: Cycle, raw: np.ndarray) -> np.ndarray:
        """`raw`, with every value that is not a number in 0..100 replaced by 0 and reported.

        A bad score is a plugin's bug: it must never decide a placement (a NaN would win no
        comparison and an infinity every one), so the node gets the plugin's minimum, the plugin is
        named in the log, and `bad_scores` counts it (exported as a metric by the extender).
        """
        lo, hi = np.minimum.reduce(raw, initial=0.0), np.maximum.reduce(raw, initial=0.0)  # NaN propagates
        if lo >= 0.0 and hi <= MAX_SCORE:
            return raw
        bad = ~((raw >= -SCORE_SLACK) & (raw <= MAX_SCORE + SCORE_SLACK))  # NaN compares False
        if bad.any():
            count = int(bad.sum())
            self.bad_scores[scorer.name] += count
            example = float(raw[bad][0])
            log.error(
                "score plugin %s gave %d invalid score(s) for %s (e.g. %r)", scorer.name, count, cycle.pod.key, example
            )
            raw = np.where(bad, 0.0, raw)
        return np.minimum(np.maximum(raw, 0.0), MAX_SCORE)  # within the slack: clip the rounding

    def choose_gpus(self, snapshot: ClusterSnapshot, pod: PodRequest, node: int) -> tuple[int, ...]:
        """The GPUs the pod would get on `node`, or () when it does not fit there.

        The first configured score plugin that is a GpuChooser and answers decides; otherwise the
        core's best GPU set (gpusets.py).
        """
        cycle = Cycle(snapshot, pod, self.config)
        for plugin in self.choosers:
            mine = plugin.choose_gpus(cycle, node)
            if mine is not None:
                return mine if len(mine) == pod.gpus_needed else ()
        _, chosen = cycle.gpu_sets(np.array([node], dtype=np.intp))
        picked = tuple(int(x) for x in chosen[0] if x >= 0)
        return picked if len(picked) == pod.gpus_needed else ()


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to 0..100 over the given nodes; all-equal values become 100 (nothing to prefer)."""
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return np.full_like(values, MAX_SCORE)
    return (values - lo) * (MAX_SCORE / (hi - lo))
