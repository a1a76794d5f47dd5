"""random (score): one feasible node, drawn uniformly from a seeded generator, scores 100; the others 0."""

import numpy as np
import pytest

from scheduler.core.config import ConfigError
from scheduler.core.framework import Cycle
from scheduler.plugins.baselines.random_pick import RandomPick
from tests.unit.plugins.baselines.helpers import req, single, snap_of


def test_random_is_reproducible_and_picks_one_node() -> None:
    snap = snap_of([[1000] * 2] * 10)
    picks = []
    for _ in range(2):
        fw = single("random", seed=7)
        picks.append([fw.decide(snap, req(gpus=1)).best() for _ in range(20)])
    assert picks[0] == picks[1] and len(set(picks[0])) > 3
    d = single("random", seed=7).decide(snap, req(gpus=1))
    assert sorted(d.scores["random"].tolist()) == [0.0] * 9 + [100.0]


def test_random_gives_a_share_a_fitting_gpu() -> None:
    snap = snap_of([[1000, 100, 600, 50]])
    fw = single("random", seed=1)
    assert {fw.choose_gpus(snap, req(milli=500), 0)[0] for _ in range(30)} == {0, 2}


def test_random_rejects_a_bad_seed() -> None:
    with pytest.raises(ConfigError):
        single("random", seed="x")


@pytest.mark.parametrize(
    ("seed", "nodes", "picks"),
    [
        pytest.param(0, 1, [0, 0, 0], id="one node always wins"),
        pytest.param(0, 3, [2, 1, 1], id="seed 0 over 3"),  # default_rng(0).integers(3) x 3 = 2, 1, 1
        pytest.param(0, 10, [8, 6, 5], id="seed 0 over 10"),  # default_rng(0).integers(10) x 3 = 8, 6, 5
        pytest.param(7, 10, [9, 6, 6], id="seed 7 over 10"),  # default_rng(7).integers(10) x 3 = 9, 6, 6
        pytest.param(42, 10, [0, 7, 6], id="seed 42 over 10"),  # default_rng(42).integers(10) x 3 = 0, 7, 6
    ],
)
def test_random_draws_one_node_per_cycle(seed: int, nodes: int, picks: list[int]) -> None:
    snap = snap_of([[1000]] * nodes)
    plugin = RandomPick.create({"seed": seed})
    every = np.arange(nodes)
    for pick in picks:
        expected = np.zeros(nodes)
        expected[pick] = 100.0
        assert plugin.score(Cycle(snap, req(gpus=1), plugin.config), every).tolist() == expected.tolist()


def test_random_draws_among_the_nodes_it_is_given() -> None:
    snap = snap_of([[1000]] * 10)
    plugin = RandomPick.create({"seed": 0})
    # positions, not node indices: default_rng(0).integers(3) = 2 -> the third of (1, 4, 7)
    assert plugin.score(Cycle(snap, req(gpus=1), plugin.config), np.array([1, 4, 7])).tolist() == [0.0, 0.0, 100.0]
    assert plugin.score(Cycle(snap, req(gpus=1), plugin.config), np.array([], dtype=np.intp)).tolist() == []
