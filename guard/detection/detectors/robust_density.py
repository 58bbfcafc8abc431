"""Feature-space detector: RDE, a robust density of the features in a kernel PCA space
(Yoo et al., "Detection of Adversarial Examples in Text Classification: Benchmark and Baseline via
Robust Density Estimation", ACL Findings 2022).

Fitted on clean features: kernel PCA with an RBF kernel down to `n_components` dimensions, then a
Minimum Covariance Determinant estimate (FastMCD) of the covariance there, which a few atypical
clean rows cannot inflate. A row's score is its robust Mahalanobis distance to its predicted
class in that space; larger is more suspicious. A row unlike every basis row (a zero kernel)
lands on one fixed point of that space however far it is: the score saturates there.

Kernel PCA keeps fit rows as its basis: at most `max_basis` of them (a seeded sample), so the
statistics file holds max_basis x D numbers and each request costs a [B, max_basis] kernel.
Fitting runs FastMCD's trials in `n_components` dimensions: seconds to minutes, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.covariance import MinCovDet
from sklearn.decomposition import KernelPCA
from sklearn.metrics.pairwise import rbf_kernel

from guard.detection.detectors.base import IMAGE, TENSOR, TEXT, Detector, FitData, Outputs
from guard.detection.detectors.mahalanobis import ClassGaussians, class_means, distance
from guard.protocol.settings import Param

SEED = 0
"""Seeds the basis sample and FastMCD's random subsets: the same clean rows give the same file."""


class KernelProjection(NamedTuple):
    """A fitted KernelPCA as arrays. The library object can be saved only as a pickle, so serving
    recomputes its transform (the RBF kernel against the basis, centred, projected) from these."""

    basis: torch.Tensor
    """[M, D]: the fit rows the kernel is taken against."""
    gamma: torch.Tensor
    """[]: the RBF kernel's exp(-gamma * |x - b|^2)."""
    basis_means: torch.Tensor
    """[M]: each basis row's mean kernel value over the basis (the centring)."""
    weights: torch.Tensor
    """[M, P]: the eigenvectors of the centred basis kernel over the square roots of their eigenvalues."""

    @classmethod
    def of(cls, kpca: KernelPCA) -> KernelProjection:
        arrays = (
            kpca.X_fit_,
            kpca.gamma_,
            rbf_kernel(kpca.X_fit_, gamma=kpca.gamma_).mean(0),
            kpca.eigenvectors_ / np.sqrt(kpca.eigenvalues_),  # remove_zero_eig: every eigenvalue is > 0
        )
        return cls(*(torch.from_numpy(np.asarray(a, np.float64)) for a in arrays))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, P]. In float64: the weights divide by the square root of each eigenvalue,
        so the kernel's rounding error grows along the smallest components; in float64 the served
        coordinates stay those of KernelPCA.transform (tests/detection/test_robust_density.py)."""
        x = features.to(self.basis.dtype)
        squared = (x * x).sum(1, keepdim=True) - 2 * x @ self.basis.T + (self.basis * self.basis).sum(1)
        kernel = torch.exp(-self.gamma * squared)
        # KernelCenterer also subtracts each row's own mean and adds the basis kernel's: constants
        # along a row, which the weights (eigenvectors of a centred kernel, orthogonal to the
        # constant vector) send to zero.
        return (kernel - self.basis_means) @ self.weights


def fit_projection(features: np.ndarray, n_components: int) -> KernelPCA:
    """Kernel PCA on [M, D] rows. KernelPCA's default gamma, 1/D, suits unit-variance features;
    penultimate ReLU features are not that, and a kernel too narrow puts every new row at the same
    point, far or near. 1/(D * variance) (scikit-learn's "scale" rule for RBF kernels) is 1/D at
    unit variance and follows the features' scale otherwise."""
    gamma = 1.0 / (features.shape[1] * features.var())
    # random_state: scikit-learn's "auto" solver turns to ARPACK, which starts from a random vector,
    # for few components of many rows; seeded, the same clean rows still give the same file.
    return KernelPCA(n_components, kernel="rbf", gamma=gamma, remove_zero_eig=True, random_state=SEED).fit(features)


class RobustDensityDetector(Detector):
    kind = "robust_density"
    parameters = {
        "statistics": Param(str, default="robust_density.npz", artifact=True),
        "n_components": Param(int, low=1, default=100),
        "support_fraction": Param(float, low=0.5, high=1.0, default=0.9),
        "max_basis": Param(int, low=2, default=2000),
    }
    """n_components: the paper's 100, clipped where the fit rows are fewer. support_fraction: the
    share of clean rows the MCD covariance is fitted on; 0.5 resists the most outliers, 1 is the
    plain covariance, and clean calibration data needs little resistance, while each trimmed row
    costs precision in 100 dimensions. max_basis: bounds the file and the per-request kernel."""
    needs_features = True
    input_kinds = (IMAGE, TENSOR, TEXT)  # it reads features and logits only, never the rows
    statistics: str
    n_components: int
    support_fraction: float
    max_basis: int

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fitted: tuple[KernelProjection, ClassGaussians] | None = None
        if self.directory is not None and (self.directory / self.statistics).is_file():
            with np.load(self.directory / self.statistics) as data:
                self.fitted = (
                    KernelProjection(*(torch.from_numpy(data[k]) for k in KernelProjection._fields)),
                    ClassGaussians(*(torch.from_numpy(data[k]) for k in ClassGaussians._fields)),
                )

    def _fitted(self) -> tuple[KernelProjection, ClassGaussians]:
        if self.fitted is None:
            raise RuntimeError(
                f"{self.kind} {self.name}: not fitted ({self.statistics} not found in "
                f"{self.directory}; run `guard calibrate`)"
            )
        return self.fitted

    def fit(self, data: FitData) -> None:
        features = np.asarray(data.features, np.float64)
        features = features.reshape(len(features), -1)
        labels = data.y if data.y is not None else data.logits.argmax(1)
        rows = len(features)
        basis = features
        if rows > self.max_basis:
            basis = features[np.sort(np.random.default_rng(SEED).choice(rows, self.max_basis, replace=False))]
        # Ranks: the class-centred rows span rows - classes dimensions, and FastMCD centres
        # `support` of them once more; its covariance is singular past those. (The centred basis
        # kernel's rank, M - 1, KernelPCA enforces: remove_zero_eig drops the null direction.)
        support, classes = int(self.support_fraction * rows), len(np.unique(labels))
        components = min(self.n_components, support - 1, rows - classes - 1)
        if components < 1 or not basis.var() > 0:
            raise ValueError(f"{self.kind} {self.name}: {rows} clean rows are too few or all alike to fit")
        kpca = fit_projection(basis, components)
        parts = np.array_split(features, -(-rows // 4096))  # each part's kernel is 4096 x M at most
        reduced = np.concatenate([kpca.transform(part) for part in parts])
        # Class means and ONE shared covariance, as mahalanobis: the paper fits a density per class
        # with two to four classes and thousands of rows each; a calibration set has tens of rows
        # per class (for 1000 classes, a few or none), fewer than the components, where each class's
        # own MCD covariance would be singular. A class no clean row fell in gets the mean of all.
        means = class_means(reduced, labels, data.logits.shape[1])
        mcd = MinCovDet(assume_centered=True, support_fraction=self.support_fraction, random_state=SEED)
        mcd.fit(reduced - means[labels])
        self.fitted = (
            KernelProjection.of(kpca),
            ClassGaussians(torch.from_numpy(means), torch.from_numpy(mcd.precision_)),
        )

    def save(self, directory: Path) -> None:
        projection, gaussians = self._fitted()
        arrays = {**projection._asdict(), **gaussians._asdict()}
        np.savez(directory / self.statistics, **{k: v.cpu().numpy() for k, v in arrays.items()})

    def to(self, device: torch.device) -> RobustDensityDetector:
        if self.fitted is not None:
            projection, gaussians = self.fitted
            self.fitted = (
                KernelProjection(*(t.to(device) for t in projection)),
                ClassGaussians(*(t.to(device) for t in gaussians)),
            )
        return self

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        projection, (means, precision) = self._fitted()
        diff = projection(original.model_features().flatten(1)) - means[original.logits.argmax(-1)]
        return distance(diff, precision).float()
