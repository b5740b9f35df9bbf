"""The report's numeric building blocks against straightforward references."""

from __future__ import annotations

import numpy as np

from datapool_pipeline.report import metrics
from datapool_pipeline.report.projection import pca_2d


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_pca_matches_svd_and_is_reproducible() -> None:
    x = unit_rows(500, 32, 0) + np.linspace(0, 1, 32, dtype=np.float32)  # a non-zero mean
    p = pca_2d(x)
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:2].T
    for k in range(2):  # same axes up to sign
        assert np.allclose(np.abs(p.coords[:, k]), np.abs(ref[:, k]), atol=1e-4)
    assert np.allclose(p.explained_variance_ratio, (sv[:2] ** 2) / (sv**2).sum(), atol=1e-6)
    assert p.fitted_on == 500
    again = pca_2d(x[::-1].copy())
    assert np.array_equal(again.coords[::-1], p.coords) or np.allclose(again.coords[::-1], p.coords, atol=1e-5)


def test_pca_subsamples_large_inputs_deterministically() -> None:
    rng = np.random.default_rng(1)
    # Two dominant directions plus noise, so the principal plane is well defined.
    x = (rng.standard_normal((3000, 2)) * [3.0, 2.0]) @ rng.standard_normal((2, 16)) + 0.1 * rng.standard_normal(
        (3000, 16)
    )
    a, b = pca_2d(x, fit_max=1000), pca_2d(x, fit_max=1000)
    assert a.fitted_on == 1000 and a.coords.shape == (3000, 2) and np.array_equal(a.coords, b.coords)
    exact = pca_2d(x)
    # The subsample's plane is close to the full one: projections correlate strongly.
    for k in range(2):
        assert abs(np.corrcoef(a.coords[:, k], exact.coords[:, k])[0, 1]) > 0.99


def test_nearest_within_and_coverage_match_brute_force() -> None:
    x = unit_rows(300, 24, 2)
    full = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(full, np.inf)
    assert np.allclose(metrics.nearest_within(x), full.min(axis=1), atol=1e-3)
    pool, chosen = x[:50], np.array([10, 120, 249])
    cand = x[50:]
    cov = metrics.coverage_distances(cand, pool, chosen)
    ref = np.sqrt(((cand[:, None, :] - np.concatenate([pool, cand[chosen]])[None]) ** 2).sum(-1)).min(axis=1)
    assert np.allclose(cov, ref, atol=1e-3)
    assert np.allclose(cov[chosen], 0, atol=1e-3)


def test_comparison_uses_shared_bins_and_ignores_infinite_values() -> None:
    ours, rand = np.array([0.1, 0.2, np.inf]), np.array([0.3, 0.9])
    comp = metrics.comparison(ours, rand)
    assert comp["ours"]["histogram"]["edges"] == comp["random"]["histogram"]["edges"]
    assert comp["ours"]["count"] == 2 and sum(comp["ours"]["histogram"]["counts"]) == 2
    assert comp["random"]["max"] == 0.9 and comp["ours"]["mean"] == np.float64(0.15000000000000002)
    empty = metrics.comparison(np.array([np.inf]), np.array([]))
    assert empty["ours"]["count"] == 0 and empty["ours"]["mean"] is None
