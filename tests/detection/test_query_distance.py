"""guard.detection.query_distance and the store's `match = "distance"`: an embedding that never makes
a query look farther than it is, the distance derived from clean data, and near-duplicates by
distance in the per-identity store."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from guard.detection.queries import QuerySettings, QueryStore, prints
from guard.detection.query_distance import derive, embed, within

DISTANCE = QuerySettings(match="distance", distance=1.0, dims=64)


def test_the_embedding_never_makes_a_query_look_farther_than_it_is():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 3, 10, 10))  # 300 values: summed in fives into 60
    y = x + rng.normal(0, rng.uniform(0.001, 0.5, (200, 1, 1, 1)), x.shape)
    true = np.linalg.norm((x - y).reshape(200, -1), axis=1)
    seen = np.linalg.norm(embed(x, 64) - embed(y, 64), axis=1)
    assert embed(x, 64).shape == (200, 60)
    assert (seen <= true * (1 + 1e-5)).all()
    # A change constant along each summed block is seen in full: the bound is tight.
    blocks = np.repeat(rng.normal(0, 0.1, (1, 60)), 5, axis=1).reshape(1, 3, 10, 10)
    tight = np.linalg.norm(embed(x[:1] + blocks, 64) - embed(x[:1], 64))
    assert tight == pytest.approx(np.linalg.norm(blocks), rel=1e-5)


def test_rows_that_fit_are_kept_as_they_are_and_a_ragged_tail_is_summed_alone():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert (embed(x, 6) == x).all()
    ragged = embed(np.arange(7, dtype=np.float32)[None], 3)  # k = 3: [0 1 2] [3 4 5] [6]
    assert ragged == pytest.approx(np.array([[3, 12, 6]]) / np.sqrt(3))


def test_within_is_inclusive_of_the_distance():
    stored = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.1]], dtype=np.float32)
    assert within(stored, np.zeros(2, np.float32), 5.0).tolist() == [True, True, False]


def test_derive_gives_the_shortest_distance_between_rows_answered_differently():
    rng = np.random.default_rng(1)
    rows = rng.uniform(0, 1, (300, 16))
    answers = rng.integers(0, 3, 300)
    e = embed(rows, 8).astype(np.float64)
    gaps = np.linalg.norm(e[:, None] - e[None], axis=2)
    expected = gaps[answers[:, None] != answers[None]].min()
    assert gaps[answers[:, None] == answers[None]][gaps[answers[:, None] == answers[None]] > 0].min() < expected
    assert derive(rows, answers, dims=8, chunk=7) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="^the clean rows need at least two different answers"):
        derive(rows, np.zeros(300, int), dims=8)


def test_derive_takes_two_answers_and_the_closest_pair_in_any_chunk():
    rows = np.array([[0.0, 0.0], [0.0, 0.3], [5.0, 5.0], [9.0, 0.0], [0.0, 9.0]])
    answers = np.array([0, 1, 0, 1, 0])  # two answers are enough; the closest pair is rows 0 and 1
    for chunk in (1, 2, 512):
        assert derive(rows, answers, dims=2, chunk=chunk) == pytest.approx(0.3)


def test_the_store_matches_by_distance_and_keeps_embeddings():
    store = QueryStore(DISTANCE)
    base = np.zeros((1, 8, 8), np.float32)
    steps = [0.0, 0.9, 1.1]  # L2 from base: one value moved
    matches = []
    for step in steps:
        q = base.copy()
        q[0, 0, 0] = step
        matches.append(store.observe("c", prints(q[None], DISTANCE), np.array([0]), 0.0)[0].near)
    # 0.9 is within 1.0 of 0.0; 1.1 is within 1.0 of 0.9 only.
    assert matches == [0, 1, 1]
    assert store.bytes_per_entry(64) == 64 * 4 + 24 and store.bytes_per_entry(10) == 10 * 4 + 24


def test_a_probe_whose_hashes_are_all_broken_is_still_near_by_distance():
    """Two copies of one query, one with every quantized window changed by steps far below the
    distance: hashes call them unrelated, the distance calls them the same query."""
    rng = np.random.default_rng(2)
    hashes = QuerySettings()
    x = rng.uniform(0.05, 0.95, (1, 16, 16)).astype(np.float32)
    step = 1.0 / hashes.levels
    level = np.floor(x / step)
    # Push every 6th value just across its nearest quantization edge: no 12-value window survives.
    moved = x.copy().reshape(-1)
    for i in range(0, moved.size, 6):
        low, high = level.reshape(-1)[i] * step, (level.reshape(-1)[i] + 1) * step
        moved[i] = low - 1e-3 if moved[i] - low < high - moved[i] else high + 1e-3
    y = moved.reshape(x.shape)
    by_hashes, by_distance = QueryStore(hashes), QueryStore(dataclasses.replace(DISTANCE, dims=256))
    for q in (x, y):
        near_hashes = by_hashes.observe("c", prints(q[None], hashes), np.array([0]), 0.0)[0].near
        near_distance = by_distance.observe("c", prints(q[None], by_distance.settings), np.array([0]), 0.0)[0].near
    assert near_hashes == 0 and near_distance == 1
    assert np.linalg.norm(y - x) < DISTANCE.distance
