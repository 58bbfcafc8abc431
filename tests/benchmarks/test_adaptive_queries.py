"""The adaptive attacker's parts (benchmarks.adaptive_queries): its replica counts what the
gateway's store counts, its edge flips cross exactly the quantization edges they claim at the
cost they claim, and a query it passes is one the served rule cannot flag."""

from __future__ import annotations

import numpy as np

from benchmarks.adaptive_queries import EDGES_START, Evasion, Replica
from benchmarks.query_attacks import split
from guard.detection.queries import QuerySettings, QueryStore, fingerprints, prints

SETTINGS = QuerySettings()  # what the demo serves with query_attack on


def digits() -> np.ndarray:
    """The demo's calibration digits (16x16 in [0, 1], grey stroke edges over every level)."""
    x, _ = split("calibration")
    return x


def levels(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x.reshape(-1) * SETTINGS.levels), 0, SETTINGS.levels - 1)


def test_the_replica_counts_the_near_duplicates_the_gateway_store_counts():
    rng = np.random.default_rng(0)
    x = digits()
    base = x[0]
    queries = [np.clip(base + rng.normal(0, s, base.shape), 0, 1).astype(np.float32) for s in [0.0, 0.003, 0.2, 0.005]]
    queries += [x[1], x[2]]  # other digits: not near
    # Copies at every noise level in between, so that some pairs share just under the threshold.
    queries += [np.clip(base + rng.normal(0, s, base.shape), 0, 1).astype(np.float32) for s in np.linspace(0, 0.1, 40)]
    replica, store = Replica(SETTINGS, digits()[:1]), QueryStore(SETTINGS)
    for q in queries:
        expected = store.observe("c", fingerprints(q[None], SETTINGS), np.array([0]), 0.0)[0].near
        assert replica.near(q) == expected
        replica.sent(q)
    # The copy with noise of 0.2 is near itself alone (now stored); the close copies share a cluster.
    near = [replica.near(q) for q in queries[:4]]
    assert near[2] == 1 and min(near[0], near[1], near[3]) > 3


def test_edge_flips_move_exactly_k_pixels_one_level_at_the_least_cost():
    x = digits()[3]
    evade = Evasion("edges", SETTINGS, seed=0)
    flipped = evade.transform(x)
    moved = levels(flipped) != levels(x)
    assert moved.sum() == EDGES_START
    assert (np.abs(levels(flipped) - levels(x))[moved] == 1).all()
    # Each flip costs its pixel's distance to the nearest edge (plus 1e-4): among the cheapest 2k.
    step = 1.0 / SETTINGS.levels
    flat = x.reshape(-1).astype(np.float64)
    level = levels(x)
    cost = np.minimum(
        np.where(level < SETTINGS.levels - 1, (level + 1) * step - flat, np.inf),
        np.where(level > 0, flat - level * step, np.inf),
    )
    paid = np.abs(flipped.reshape(-1) - flat)[moved]
    assert (paid <= np.sort(cost)[2 * EDGES_START - 1] + 2e-4).all()


def test_a_passed_query_is_never_flaggable_and_the_strength_grows_until_it_passes():
    x = digits()[4]
    for kind in ("noise", "edges"):
        replica, evade = Replica(SETTINGS, digits()[:1]), Evasion(kind, SETTINGS, seed=3)
        store = QueryStore(SETTINGS)
        for answer in [0, 1] * 15:  # the same query over and over, answers flipping: a probe
            sent = evade.passed(replica, x, lambda q: q)
            replica.sent(sent)
            assert not store.observe("c", fingerprints(sent[None], SETTINGS), np.array([answer]), 0.0)[0].flagged
        assert max(evade.tries) > 1  # copies of one query are near: some had to be resampled
    # Without evasion the same stream is flagged.
    store = QueryStore(SETTINGS)
    flags = [store.observe("c", fingerprints(x[None], SETTINGS), np.array([a]), 0.0)[0].flagged for a in [0, 1] * 15]
    assert any(flags)


def test_spread_and_away_send_the_least_step_that_passes_a_distance_check():
    settings = QuerySettings(match="distance", distance=1.5, min_near=2)
    x = digits()[5]
    for kind in ("spread", "away"):
        replica, evade = Replica(settings, x[None]), Evasion(kind, settings, seed=4)
        store = QueryStore(settings)
        steps = []
        for answer in [0, 1] * 8:
            sent = evade.passed(replica, x, lambda q: q)
            assert replica.near(sent) < settings.min_near
            assert not store.observe("c", prints(sent[None], settings), np.array([answer]), 0.0)[0].flagged
            step = float(np.linalg.norm(sent - x))
            if step > 0:
                # A step a tenth shorter along the same direction would not have passed.
                shorter = x + 0.9 * (sent - x)
                assert replica.near(shorter.astype(np.float32)) >= settings.min_near
            steps.append(step)
            replica.sent(sent)
        assert max(steps) > 0.5  # copies of one query: later ones had to move away
