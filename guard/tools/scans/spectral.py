"""Spectral signatures (NeurIPS 2018) on penultimate features.

Per labelled class: take the top right singular vector v of the class's centred features; a
sample's score is its squared projection on v. Poisoned samples of a class share a direction
(the trigger's feature) that dominates the class's covariance, so they project far out.

Centring: the paper centres on the class mean of the (possibly poisoned) training features. That
assumes the poison is a small share of the class; under all-to-one poisoning of 10% of a 10-class
training set the poison is about HALF of the target class, the class mean sits between the two
groups and both project equally far. With a trusted clean reference set (held-out, labelled), we
centre on the reference class mean instead, so clean samples project near zero and only the
poison projects far; v is still taken from the training features. Scores are divided by the
class's median reference score (or, without a reference, by the class's own median) so that one
ranking spans all classes.
"""

from __future__ import annotations

import numpy as np


def spectral_scores(
    features: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Per-sample outlier score [N] (comparable across classes; higher = more likely poisoned)."""
    features = np.asarray(features, dtype=np.float64)
    scores = np.zeros(len(features))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        own = features[members]
        _, _, vt = np.linalg.svd(own - own.mean(0), full_matrices=False)
        direction = vt[0]
        ref = reference[reference_labels == c] if reference is not None else np.empty((0, own.shape[1]))
        if len(ref) >= 2:
            centre = ref.mean(0)
            scale = np.median(((ref - centre) @ direction) ** 2)
        else:
            centre = own.mean(0)
            scale = np.median(((own - centre) @ direction) ** 2)
        scores[members] = ((own - centre) @ direction) ** 2 / max(scale, 1e-12)
    return scores
