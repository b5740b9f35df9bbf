"""The bf16 screen (selection.screen) never rules out a pair that matters, and the selector's screened
paths (pool read from the hnswlib index, screened block updates) pick exactly what the reference picks."""

from __future__ import annotations

import numpy as np
import pytest

from datapool_pipeline.selection import greedy_k_center, kcenter
from datapool_pipeline.selection.kcenter import build_hnsw_index, exact_nearest_sq_distance
from datapool_pipeline.selection.screen import Int8Rows, LowRows, fp32_slack
from datapool_pipeline_tests.test_selection import reference_greedy, unit


def near_ties(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows that differ from a few bases by less than bf16 resolution, plus exact copies."""
    base = unit(rng, 8, d)
    x = base[rng.integers(8, size=n)] + rng.normal(scale=1e-4, size=(n, d)).astype(np.float32)
    x[::7] = base[0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_int8_at_least_keeps_every_pair_over_the_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool, x = near_ties(rng, 3000, 64), near_ties(rng, 40, 64)
    low = Int8Rows(len(pool), 64, lambda a, b: pool[a:b], block=700)
    sims = x.astype(np.float64) @ pool.astype(np.float64).T
    threshold = sims.max(axis=1) - rng.choice([0.0, 1e-6, 1e-3], size=len(x))
    b, j = low.at_least(x, threshold)
    kept = set(zip(b.tolist(), j.tolist(), strict=True))
    assert {(r, c) for r, c in zip(*np.nonzero(sims >= threshold[:, None]), strict=True)} <= kept
    # with a loose threshold and `margin`: every pair within margin of the row's maximum (and over it)
    loose = threshold - 0.5
    b, j = low.at_least(x, loose, margin=1e-6)
    kept = set(zip(b.tolist(), j.tolist(), strict=True))
    near = sims >= sims.max(axis=1, keepdims=True) - 1e-6
    assert {(r, c) for r, c in zip(*np.nonzero(near), strict=True)} <= kept
    assert len(kept) < (sims >= loose[:, None]).sum()  # the loose threshold alone keeps more


@pytest.mark.parametrize("seed", range(4))
def test_above_keeps_every_pair_over_the_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    picks, x = near_ties(rng, 300, 32), near_ties(rng, 50, 32)
    low = LowRows(len(picks), 32, lambda a, b: picks[a:b])
    sims = x.astype(np.float64) @ picks.astype(np.float64).T
    threshold = np.sort(sims, axis=1)[:, -5] + rng.normal(scale=1e-5, size=len(x))
    b, j = low.above(x, threshold, fp32_slack(32), 20, 280, chunk=64)
    kept = set(zip(b.tolist(), j.tolist(), strict=True))
    must = {(r, c) for r, c in zip(*np.nonzero(sims >= threshold[:, None]), strict=True) if 20 <= c < 280}
    assert must <= kept
    assert all(20 <= c < 280 for c in j)


@pytest.mark.parametrize("pool_from_index", [False, True])
def test_screened_paths_pick_the_reference(monkeypatch: pytest.MonkeyPatch, pool_from_index: bool) -> None:
    monkeypatch.setattr(kcenter, "SCREEN_MIN_PICKS", 2)
    rng = np.random.default_rng(5)
    centers = unit(rng, 15, 24)
    def clustered(n: int) -> np.ndarray:
        x = centers[rng.integers(15, size=n)] + rng.normal(scale=0.15, size=(n, 24))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    cands, pool = clustered(1200), clustered(600)
    cands[500:505] = cands[7]
    cands[900] = pool[3]
    index = build_hnsw_index(pool)
    result = greedy_k_center(cands, 80, pool=None if pool_from_index else pool, pool_index=index,
                             exact_max_pairs=0, block_rows=64)
    assert result.picks == reference_greedy(cands, pool, 80, 0)
    exact = np.sqrt(exact_nearest_sq_distance(cands, pool))
    assert np.allclose(result.pool_distances[result.picks], exact[result.picks], atol=1e-5)
