"""The lazily updated selector picks exactly what the plain greedy loop picks (multi-block, duplicates,
hnswlib upper bounds that are deliberately loose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datapool_pipeline.datapool.pool_index import open_index_file
from datapool_pipeline.selection import greedy_k_center, kcenter
from datapool_pipeline.selection.kcenter import _LazyDistances, build_hnsw_index, exact_nearest_sq_distance
from datapool_pipeline_tests.test_selection import reference_greedy, unit


def clustered(rng: np.random.Generator, n: int, d: int, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(len(centers), size=n)] + rng.normal(scale=0.15, size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("block_rows", [1, 7, 64])
@pytest.mark.parametrize("pool_size", [0, 50])
def test_blocks_match_reference(block_rows: int, pool_size: int) -> None:
    rng = np.random.default_rng(block_rows + pool_size)
    centers = unit(rng, 12, 16)
    cands, pool = clustered(rng, 700, 16, centers), clustered(rng, pool_size, 16, centers)
    cands[300:310] = cands[3]  # exact duplicates: ties go to the lowest index
    ours = greedy_k_center(cands, 90, pool=pool, seed=2, block_rows=block_rows)
    assert ours.picks == reference_greedy(cands, pool, 90, 2)


def test_hnsw_path_is_exact_and_reports_exact_pool_distances_for_picks() -> None:
    rng = np.random.default_rng(11)
    centers = unit(rng, 20, 24)
    cands, pool = clustered(rng, 1500, 24, centers), clustered(rng, 800, 24, centers)
    result = greedy_k_center(cands, 60, pool=pool, seed=0, block_rows=128, exact_max_pairs=0)
    assert result.picks == reference_greedy(cands, pool, 60, 0)
    exact = np.sqrt(exact_nearest_sq_distance(cands, pool))
    assert np.allclose(result.pool_distances[result.picks], exact[result.picks], atol=1e-5)


@pytest.mark.parametrize("pool_from_index", [False, True])
def test_every_hnswlib_refinement_level_keeps_the_picks_exact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pool_from_index: bool
) -> None:
    """A first query at ef 1 (loose bounds for many candidates), then ef 32, 128 and 512 for those that
    come near the top (every level on, whatever the pool size), then exact verification."""
    monkeypatch.setattr(kcenter, "HNSW_EF_FIRST", 1)
    monkeypatch.setattr(kcenter, "_REFINE_MIN_POOL_PER_EF", 0)
    monkeypatch.setattr(kcenter, "_REFINE_BATCH", 16)
    rng = np.random.default_rng(13)
    centers = unit(rng, 60, 24)
    cands, pool = clustered(rng, 1200, 24, centers), clustered(rng, 2000, 24, centers)
    index = build_hnsw_index(pool)
    if pool_from_index:  # as datapool.pool_index returns it: vectors read from the saved file
        index.save_index(str(tmp_path / "pool.hnsw"))
        index = open_index_file(str(tmp_path / "pool.hnsw"), 24, len(pool))
    result = greedy_k_center(cands, 60, pool=None if pool_from_index else pool, pool_index=index,
                             exact_max_pairs=0, block_rows=64)
    assert result.picks == reference_greedy(cands, pool, 60, 0)


def test_loose_upper_bounds_are_verified_before_picking() -> None:
    """Upper bounds far from the truth for a fifth of the candidates (distance to a random pool sample
    instead of the nearest) still give the exact picks."""
    rng = np.random.default_rng(12)
    centers = unit(rng, 10, 16)
    cands, pool = clustered(rng, 900, 16, centers), clustered(rng, 300, 16, centers)
    anyone = pool[rng.integers(len(pool), size=len(cands))]
    loose = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", cands, anyone), 0.0).astype(np.float32)
    keep = rng.random(len(cands)) < 0.8
    loose[keep] = exact_nearest_sq_distance(cands[keep], pool)
    state = _LazyDistances(cands, loose, 50, 32, pool)
    while len(state.picks) < 50:
        state.take(state.argmax())
    assert state.picks == reference_greedy(cands, pool, 50, 0)
    exact = exact_nearest_sq_distance(cands, pool)
    assert np.allclose(state.pool_sq[state.picks], exact[state.picks], atol=1e-6)  # picks were verified
