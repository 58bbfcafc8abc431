"""Activation clustering (2018) on penultimate features.

Per labelled class: reduce the features to a few dimensions (PCA here, ICA in the paper; PCA is
deterministic and fast), split them into two clusters with k-means, and measure how well they
separate (silhouette score). A clean class is one blob (low silhouette); a poisoned class splits
into its genuine samples and the triggered ones.

Which cluster is the poison: the paper's relative-size rule (the smaller one) fails when the
poison is about half the class, as under all-to-one poisoning of 10% of a 10-class set. With a
trusted clean reference set, the cluster whose centroid lies farther from the reference class's
mean (in the reduced space) is the suspect; without one, the smaller cluster is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score


@dataclass
class ClassClusters:
    label: int
    silhouette: float
    sizes: tuple[int, int]
    suspect: int
    """Index of the suspect cluster (0 or 1)."""
    suspect_share: float
    """Share of the class in the suspect cluster."""
    separation: float
    """With a reference: distance of the suspect centroid from the reference class mean divided
    by the other centroid's (about 1 for a clean class with two writing styles, large when one
    cluster is unlike every clean sample of the class). Without one: the silhouette score."""


def activation_clustering(
    features: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    dims: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, list[ClassClusters]]:
    """Per-sample score [N] and per-class cluster summaries.

    A sample's score is its class's `separation` when it lies in the suspect cluster and 0
    otherwise (plus a small term, its standardised distance from the other cluster, that orders
    samples within a cluster): a global ranking puts the best-separated suspect clusters first.
    """
    features = np.asarray(features, dtype=np.float64)
    scores = np.zeros(len(features))
    summaries = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 4:
            continue
        pca = PCA(n_components=min(dims, len(members) - 1, features.shape[1]), random_state=seed)
        reduced = pca.fit_transform(features[members])
        assign = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
        sizes = (int(np.sum(assign == 0)), int(np.sum(assign == 1)))
        if min(sizes) == 0:
            summaries.append(ClassClusters(int(c), 0.0, sizes, 0, 0.0, 0.0))
            continue
        silhouette = float(silhouette_score(reduced, assign, random_state=seed))
        centroids = np.stack([reduced[assign == k].mean(0) for k in (0, 1)])
        ref = reference[reference_labels == c] if reference is not None else np.empty((0,))
        if len(ref) >= 1:
            far = np.linalg.norm(centroids - pca.transform(ref).mean(0), axis=1)
            suspect = int(np.argmax(far))
            separation = float(far[suspect] / max(far[1 - suspect], 1e-12))
        else:
            suspect, separation = int(np.argmin(sizes)), silhouette
        summaries.append(ClassClusters(int(c), silhouette, sizes, suspect, sizes[suspect] / len(members), separation))
        in_suspect = assign == suspect
        distance = np.linalg.norm(reduced - centroids[1 - suspect], axis=1)
        spread = distance[~in_suspect].std() or 1.0
        # The tie-breaker is squashed into [0, 0.01) so it never reorders clusters of different classes.
        tie = 0.01 * (1 - np.exp(-distance / spread))
        scores[members] = np.where(in_suspect, separation + tie, 0.0)
    return scores, summaries
