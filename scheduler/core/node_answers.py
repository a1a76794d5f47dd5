"""Per-node plugin answers kept per pod shape, asked again only for the nodes that changed.

kube-scheduler asks about pod after pod of the same shape (the replicas of one Deployment, the
workers of one job) while only a few nodes change between two asks: a bind, a report. A plugin
whose answer for a node depends only on the pod's request and on that node's own rows declares so
(`FilterPlugin.filter_per_node`, `ScorePlugin.score_per_node`); the framework then keeps its
answers here, per shape, with the snapshot's change count when each node was asked, and asks
the plugin again only for nodes whose `ClusterSnapshot.changed_at` moved since.

What such a plugin may read, so that a kept answer is the answer it would give now:
- of the pod, only its shape (`pod_shape`): the plugin is handed the shape, whose name, owner,
  gang and other identity fields (IDENTITY) are blank, so it cannot depend on them;
- of the snapshot, the node's own rows (anything `place`, `remove` or `update_node` changes for
  that node), the sizes nodes report for images, weights and adapters (`ClusterSnapshot.catalog`:
  any change to them drops every kept answer), and the configuration;
- not the clock, not report ages (freshness), not other nodes' occupancy (inference-fit's
  spreading) and not the candidate set (a minimum over the nodes scored).

The per-node answers are the same whether asked for one node or for all. Kept per node: which
per-node filter turns it away first, with its reason and whether preemption may help there, as one
small key (so that a decision sorts its candidates by key once and has the feasible nodes and every
rejection, grouped by reason, without a pass per plugin or per reason); and raw scores (normalising
over the feasible nodes is done per decision, by the framework). The unit test
tests/unit/core/test_node_answers.py checks decisions with kept answers against fresh ones over
random event sequences.

Memory: per shape, about 17 bytes per node and 8 per node and kept score or value (5,000 nodes:
about 0.33 MB for the default policy); at most MAX_SHAPES shapes are kept, the least recently asked
making room for a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from scheduler.core.snapshot import ClusterSnapshot
from scheduler.core.types import PodRequest

if TYPE_CHECKING:
    from scheduler.core.framework import Cycle, FilterPlugin, ScorePlugin

MAX_SHAPES = 32
MAX_TEXTS = 1024  # distinct reasons kept per plugin and shape beyond one per node


# What names a pod rather than what it asks: left out of its shape.
IDENTITY: dict[str, Any] = {
    "namespace": "",
    "name": "",
    "uid": "",
    "owner": "",
    "node_name": "",
    "gpu_ids": (),
    "nominated_node": "",
    "rank": None,
    "priority": 0,
    "planned_node": "",
    "gang_plan": "",
    "pod_group": "",
    "min_member": 0,
    "group_size_ref": "",
}
# The fields of a pod's shape, read at C speed: pods with equal keys have equal shapes.
shape_key = attrgetter(*(f.name for f in fields(PodRequest) if f.name not in IDENTITY))


def pod_shape(pod: PodRequest) -> PodRequest:
    """What the pod asks, without who it is: pods of one shape get the same per-node answers."""
    return replace(pod, **IDENTITY)


PASSES = 127  # the position of a node no filter turns away: after every filter's


class ShapeAnswers:
    """One pod shape's kept answers over every node of a snapshot."""

    def __init__(self, n: int, catalog: int) -> None:
        self.n = n
        self.catalog = catalog
        self.filter_at = np.full(n, -1, dtype=np.int64)  # the snapshot's change count when asked
        self.fresh_at = -1  # the change count when every node's filter answers were last current
        # Per node, its failure: the first per-node filter that turns it away, with its reason and
        # whether evicting pods could let the pod on, as a key into the tables below (0: none
        # does). A decision sorts its candidates by key once and has every rejection grouped. The
        # keys are as narrow as they can be (8 bits while there are few): a narrow key is less to
        # read, and radix-sorted.
        self.fail_key = np.zeros(n, dtype=np.uint8)
        self.texts: dict[str, list[str]] = {}
        self._code_of: dict[str, dict[str, int]] = {}
        self._key_of: dict[tuple[int, int, bool], int] = {}
        # Per key: the filter's position (in the framework's filters), the reason (an index into
        # texts[that plugin]; -1 for a filter whose answers are not kept) and resolvability.
        self.key_position: list[int] = [PASSES]
        self.key_code: list[int] = [-1]
        self.key_resolvable: list[bool] = [False]
        self._positions: np.ndarray | None = None
        self.score_at = np.full(n, -1, dtype=np.int64)
        self.scores: dict[str, np.ndarray] = {}  # plugin -> (n,) float64
        self.values: dict[str, np.ndarray] = {}  # plugin -> (n,) float64: ScorePlugin.node_values

    def key(self, position: int, code: int, resolvable: bool) -> int:
        """The failure key of a filter's reason, made on first use."""
        found = self._key_of.get((position, code, resolvable))
        if found is None:
            found = self._key_of[(position, code, resolvable)] = len(self.key_position)
            if found > np.iinfo(self.fail_key.dtype).max:
                self.fail_key = self.fail_key.astype(np.uint16 if found < 2**16 else np.int64)
            self.key_position.append(position)
            self.key_code.append(code)
            self.key_resolvable.append(resolvable)
            self._positions = None
        return found

    def positions(self) -> np.ndarray:
        """Each key's filter position (PASSES for key 0), as an array to index with keys."""
        if self._positions is None:
            self._positions = np.array(self.key_position, dtype=np.int16)
        return self._positions

    def refresh_filters(
        self,
        snapshot: ClusterSnapshot,
        cycle: Callable[[], Cycle],
        plugins: Sequence[tuple[int, FilterPlugin]],
        nodes: np.ndarray,
    ) -> None:
        """Ask `plugins` (each with its position among the filters, in order) about the nodes of
        `nodes` that changed since they were last asked.

        Once every node has been asked, the nodes changed since are read from the snapshot's log
        of changes (a few nodes) rather than found by comparing every node's change count."""
        if not plugins:
            return
        if any(len(texts) > MAX_TEXTS + self.n for texts in self.texts.values()):
            # Reasons that name changing figures (free disk) pile up: start over, every node anew.
            self.filter_at[:] = -1
            self.fresh_at = -1
            self.texts.clear()
            self._code_of.clear()
            self._key_of.clear()
            del self.key_position[1:], self.key_code[1:], self.key_resolvable[1:]
            self.fail_key = np.zeros(self.n, dtype=np.uint8)
            self._positions = None
        since = snapshot.changed_since(self.fresh_at) if self.fresh_at >= 0 else None
        if since is not None:
            if since:
                self._ask(snapshot, cycle, plugins, np.unique(np.array(since, dtype=np.intp)))
            self.fresh_at = snapshot.changes
            return
        stale = nodes[self.filter_at[nodes] < snapshot.changed_at[nodes]]
        if stale.size:
            self._ask(snapshot, cycle, plugins, stale)
        if (self.filter_at >= snapshot.changed_at).all():
            self.fresh_at = snapshot.changes

    def _ask(
        self,
        snapshot: ClusterSnapshot,
        cycle: Callable[[], Cycle],
        plugins: Sequence[tuple[int, FilterPlugin]],
        stale: np.ndarray,
    ) -> None:
        shaped = cycle()
        self.fail_key[stale] = 0
        remaining = stale
        for position, plugin in plugins:
            if not remaining.size:
                break
            ok = np.asarray(plugin.filter(shaped, remaining), dtype=bool)
            rejected = remaining[~ok]
            if rejected.size:
                texts = self.texts.setdefault(plugin.name, [])
                code_of = self._code_of.setdefault(plugin.name, {})
                words = plugin.reasons(shaped, rejected)
                for text in words:
                    if text not in code_of:
                        code_of[text] = len(texts)
                        texts.append(text)
                mask = np.asarray(plugin.resolvable_nodes(shaped, rejected), dtype=bool).tolist()
                self.fail_key[rejected] = [
                    self.key(position, code_of[text], resolvable) for text, resolvable in zip(words, mask, strict=True)
                ]
                remaining = remaining[ok]
        self.filter_at[stale] = snapshot.changes

    def refresh_scores(
        self,
        snapshot: ClusterSnapshot,
        cycle: Callable[[], Cycle],
        plugins: Sequence[ScorePlugin],
        with_values: Sequence[ScorePlugin],
        nodes: np.ndarray,
        checked: Callable[[ScorePlugin, np.ndarray], np.ndarray],
    ) -> None:
        """Score the nodes of `nodes` (all feasible for the shape) that changed since last scored,
        and keep the node values of `with_values` for them.

        `checked` is the framework's check of a plugin's raw scores for the decision's pod."""
        if not (plugins or with_values):
            return
        stale = nodes[self.score_at[nodes] < snapshot.changed_at[nodes]]
        if not stale.size:
            return
        shaped = cycle()
        for plugin in plugins:
            raw = np.asarray(plugin.score(shaped, stale), dtype=np.float64)
            self.scores.setdefault(plugin.name, np.zeros(self.n))[stale] = checked(plugin, raw)
        for plugin in with_values:
            values = np.asarray(plugin.node_values(shaped, stale), dtype=np.float64)
            self.values.setdefault(plugin.name, np.zeros(self.n))[stale] = values
        self.score_at[stale] = snapshot.changes


class NodeAnswers:
    """Shape -> ShapeAnswers over one snapshot, for one framework (kept in the snapshot's memo)."""

    def __init__(self) -> None:
        self.shapes: dict[tuple[object, ...], ShapeAnswers] = {}

    @staticmethod
    def of(snapshot: ClusterSnapshot, owner: object) -> NodeAnswers:
        return snapshot.memo(("node-answers", id(owner)), lambda _: NodeAnswers())

    def shape(self, snapshot: ClusterSnapshot, pod: PodRequest) -> ShapeAnswers:
        """The answers kept for the pod's shape."""
        shape = shape_key(pod)
        entry = self.shapes.pop(shape, None)  # put back last: the least recently used go first
        if entry is None or entry.catalog != snapshot.catalog:
            if entry is None and len(self.shapes) >= MAX_SHAPES:
                del self.shapes[next(iter(self.shapes))]
            entry = ShapeAnswers(len(snapshot), snapshot.catalog)
        self.shapes[shape] = entry
        return entry
