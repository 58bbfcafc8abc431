"""Near-duplicates by distance: what `[clients] match = "distance"` compares instead of hashes.

A hash fingerprint (guard.detection.queries.fingerprints) calls two queries near when they share
enough hashes of quantized windows. An attacker who knows the quantization pushes a handful of
values just across an edge and breaks most hashes for almost no distortion
(benchmarks.adaptive_queries, evasion `edges`: 0.005-0.045 L2 per query). A distance has no edge to
push across: to look far from its earlier queries, a query has to be far from them.

That holds only if the compared embedding never makes a query look farther away than it is. Each
embedded value is the sum of `k` consecutive values of the query divided by sqrt(k), so by
Cauchy-Schwarz the embedded distance is at most the query's own L2 distance (the map is 1-Lipschitz),
whatever the attacker knows of it. The sum keeps a change's large-scale part (consecutive values of
an image row are neighbouring pixels) and makes every stored query `dims` numbers at most, whatever
the input's size.

The threshold is the model's: `derive` gives the shortest distance between two clean queries the
model answers differently. Below it, a benign client sending clean inputs has no near pair whose
answers differ, which is what rule `decision` needs to flag.
"""

from __future__ import annotations

import numpy as np


def embed(x: np.ndarray, dims: int) -> np.ndarray:
    """Each row as at most `dims` float32 values: sums of k consecutive values over sqrt(k), k the
    fewest that fit the row in `dims` (a row of at most `dims` values is kept as it is)."""
    rows = x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float32)
    values = rows.shape[1]
    k = -(-values // dims)
    if k == 1:
        return rows
    padded = np.zeros((len(rows), k * -(-values // k)), dtype=np.float32)
    padded[:, :values] = rows  # zeros add nothing to a sum
    summed: np.ndarray = padded.reshape(len(rows), -1, k).sum(axis=2) / np.float32(np.sqrt(k))
    return summed


def within(stored: np.ndarray, embedding: np.ndarray, distance: float) -> np.ndarray:
    """Which stored embeddings [n, dims] are at most `distance` (L2) from one embedding [dims]."""
    gaps = stored - embedding[None, :]
    near: np.ndarray = np.einsum("ij,ij->i", gaps, gaps) <= np.float32(distance) ** 2
    return near


def derive(rows: np.ndarray, answers: np.ndarray, dims: int, chunk: int = 512) -> float:
    """The shortest embedded distance between two clean rows the model answers differently: a
    `distance` below which clean inputs never make a near pair with different answers."""
    e = embed(rows, dims).astype(np.float64)
    answers = np.asarray(answers)
    if len(np.unique(answers)) < 2:
        raise ValueError("the clean rows need at least two different answers to derive a distance")
    squares = (e * e).sum(axis=1)
    best = np.inf
    for start in range(0, len(e), chunk):  # bounded memory: chunk x n distances at a time
        part = slice(start, start + chunk)
        d2 = squares[part, None] + squares[None, :] - 2.0 * e[part] @ e.T
        differ = answers[part, None] != answers[None, :]
        if differ.any():
            best = min(best, float(d2[differ].min()))
    return float(np.sqrt(max(best, 0.0)))
