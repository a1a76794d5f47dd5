"""Per-shape node values (scheduler/core/shape_cache.py): which nodes must be computed again."""

from collections.abc import Hashable

import numpy as np
import pytest

from scheduler.core import shape_cache
from scheduler.core.shape_cache import ShapeCache, shape_key
from scheduler.core.snapshot import ClusterSnapshot
from tests.unit.fragmentation_cases import req, snapshot_with

EVERY = np.arange(4, dtype=np.intp)


def stored(
    cache: ShapeCache, snap: ClusterSnapshot, key: Hashable, nodes: np.ndarray, inputs: tuple[object, ...]
) -> list[int]:
    """The nodes `stale` names, each then stored with its own index as value (as a plugin would)."""
    values, stale = cache.stale(snap, key, nodes, inputs)
    values.store(snap, stale, stale.astype(np.float64), stale)
    assert values.value[stale].tolist() == stale.tolist()
    return stale.tolist()


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (what happens, nodes asked for) -> the stale nodes of each ask
        pytest.param([("-", EVERY), ("-", EVERY)], [[0, 1, 2, 3], []], id="computed once, then kept"),
        pytest.param([("-", np.array([1, 3])), ("-", EVERY)], [[1, 3], [0, 2]], id="only the nodes asked for"),
        pytest.param([("-", EVERY), ("place 2", EVERY), ("-", EVERY)], [[0, 1, 2, 3], [2], []], id="a placement"),
        pytest.param(
            [("-", EVERY), ("place 2", EVERY), ("remove", EVERY)], [[0, 1, 2, 3], [2], [2]], id="a removal too"
        ),
        pytest.param([("-", EVERY), ("place 1", np.array([0, 2])), ("-", EVERY)], [[0, 1, 2, 3], [], [1]], id="later"),
        pytest.param([("-", EVERY), ("new inputs", EVERY)], [[0, 1, 2, 3], [0, 1, 2, 3]], id="other inputs drop all"),
        pytest.param([("-", EVERY), ("other shape", EVERY)], [[0, 1, 2, 3], [0, 1, 2, 3]], id="a shape of its own"),
    ],
)
def test_stale_names_the_nodes_changed_since_they_were_computed(
    steps: list[tuple[str, np.ndarray]], expected: list[list[int]]
) -> None:
    snap = snapshot_with([[1000] * 2] * 4, [8000] * 4)
    pod = req("p", gpus=1)
    cache, owner, inputs = ShapeCache.of(snap, "plugin"), object(), (object(),)
    assert ShapeCache.of(snap, "plugin") is cache  # in the snapshot's memo
    got = []
    for what, nodes in steps:
        key = shape_key(pod)
        if what.startswith("place"):
            snap.place(req("q", gpus=1), int(what.split()[1]))
        elif what == "remove":
            snap.remove("t/q")
        elif what == "new inputs":
            inputs = (owner,)
        elif what == "other shape":
            key = shape_key(req("p", gpus=2))
        got.append(stored(cache, snap, key, nodes, inputs))
    assert got == expected


def test_values_are_kept_per_shape_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shape_cache, "MAX_SHAPES", 2)
    snap = snapshot_with([[1000] * 2] * 4, [8000] * 4)
    cache = ShapeCache.of(snap, "plugin")
    shapes = [shape_key(req("p", gpus=g)) for g in (1, 2, 1, 0)]
    # 1 GPU, 2 GPUs: computed; 1 GPU again: kept; CPU only: a third shape, so all start over.
    assert [len(stored(cache, snap, key, EVERY, ())) for key in shapes] == [4, 4, 0, 4]
    assert list(cache.shapes) == [shapes[3]]


def test_a_shape_is_what_the_pod_asks() -> None:
    assert shape_key(req("a", milli=300, cpu=2000)) == shape_key(req("b", milli=300, cpu=2000))
    assert shape_key(req("a", milli=300, cpu=2000)) != shape_key(req("a", milli=300, cpu=2000, models=("T4",)))
    assert shape_key(req("a", gpus=1)) != shape_key(req("a", milli=1000))
