"""2D projection of embeddings for the report's embedding view: PCA, reproducible and fast.

PCA rather than t-SNE/UMAP: it is deterministic, linear (distances along the axes mean the same
everywhere, so "grey vs blue" reads honestly), needs no extra dependency and projects 10^5 x 512
in well under a second. The axes are fitted on a seeded random subsample of at most `fit_max`
rows (exact PCA when there are fewer), via the eigenvectors of the d x d covariance, and every
row is then projected. Component signs are fixed (largest loading positive) so the same data
always gives the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIT_MAX = 20_000


@dataclass
class Projection:
    coords: np.ndarray  # (n, 2) float32
    explained_variance_ratio: list[float]
    fitted_on: int


def pca_2d(x: np.ndarray, *, fit_max: int = FIT_MAX, seed: int = 0) -> Projection:
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n == 0:
        return Projection(np.empty((0, 2), np.float32), [0.0, 0.0], 0)
    fit = x[np.sort(np.random.default_rng(seed).choice(n, size=fit_max, replace=False))] if n > fit_max else x
    mean = fit.mean(axis=0, dtype=np.float64)
    centred = fit.astype(np.float64) - mean
    cov = centred.T @ centred / max(len(fit) - 1, 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:2]
    axes = vectors[:, order]
    if axes.shape[1] < 2:  # 1-dimensional input: pad with a zero axis
        axes = np.hstack([axes, np.zeros((axes.shape[0], 2 - axes.shape[1]))])
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(2)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    total = float(values.clip(min=0).sum())
    ratio = [float(max(values[i], 0.0) / total) if total > 0 else 0.0 for i in order]
    ratio += [0.0] * (2 - len(ratio))
    # Project in float32 without a centred copy of x: (x - mean) @ A = x @ A - mean @ A.
    coords = x @ axes.astype(np.float32) - (mean @ axes).astype(np.float32)
    return Projection(coords, ratio, len(fit))
