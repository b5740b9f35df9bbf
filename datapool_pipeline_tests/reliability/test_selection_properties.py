"""Property-based tests of the production selector (hypothesis draws sizes, k, seeds and block sizes;
numpy draws the vectors from the drawn seed, so every failure is reproducible)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datapool_pipeline.selection import greedy_k_center

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def coverage_radius(cands: np.ndarray, pool: np.ndarray, picks: list[int]) -> float:
    """Largest distance from any candidate to its nearest pool-or-picked sample (float64)."""
    centers = np.concatenate([pool, cands[picks]]).astype(np.float64)
    if not len(centers):
        return float("inf")
    c = cands.astype(np.float64)
    d2 = (c * c).sum(1)[:, None] - 2 * c @ centers.T + (centers * centers).sum(1)[None, :]
    return float(np.sqrt(np.maximum(d2.min(axis=1), 0.0)).max())


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 120))
    d = draw(st.sampled_from([2, 3, 8, 32]))
    pool = unit(rng, draw(st.integers(0, 60)), d)
    k = draw(st.integers(1, n + 5))
    block_rows = draw(st.sampled_from([1, 7, 64, 4096]))
    return unit(rng, n, d), pool, k, draw(st.integers(0, 1000)), block_rows


@PROPERTY_SETTINGS
@given(problems())
def test_exact_size_and_no_sample_twice(problem: tuple[np.ndarray, np.ndarray, int, int, int]) -> None:
    cands, pool, k, seed, block_rows = problem
    result = greedy_k_center(cands, k, pool=pool, seed=seed, block_rows=block_rows)
    assert len(result.picks) <= min(k, len(cands))
    if len(result.picks) < min(k, len(cands)):
        # Fewer only when every candidate left is a copy (squared distance within the duplicate
        # tolerance) of a datapool sample or of a pick.
        reference = np.concatenate([pool, cands[result.picks]]) if len(pool) else cands[result.picks]
        left = np.setdiff1d(np.arange(len(cands)), result.picks)
        d2 = ((cands[left, None, :] - reference[None, :, :]) ** 2).sum(-1).min(axis=1)
        assert (d2 < 1e-4).all()
    without_stop = greedy_k_center(cands, k, pool=pool, seed=seed, block_rows=block_rows, stop_at_duplicates=False)
    assert len(without_stop.picks) == min(k, len(cands))
    assert without_stop.picks[: len(result.picks)] == result.picks
    assert len(set(result.picks)) == len(result.picks)
    assert all(0 <= i < len(cands) for i in result.picks)


@PROPERTY_SETTINGS
@given(problems(), st.data())
def test_pool_samples_are_never_reselected(problem: tuple[np.ndarray, np.ndarray, int, int, int],
                                           data: st.DataObject) -> None:
    """Candidates that are copies of datapool samples are never picked while anything new remains."""
    fresh, pool, _, seed, block_rows = problem
    if not len(pool):
        return
    copies = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=len(pool), unique=True))
    cands = np.concatenate([fresh, pool[copies]])
    k = data.draw(st.integers(1, len(fresh)))
    result = greedy_k_center(cands, k, pool=pool, seed=seed, block_rows=block_rows)
    assert all(i < len(fresh) for i in result.picks)


@PROPERTY_SETTINGS
@given(problems())
def test_coverage_radius_never_grows_with_k(problem: tuple[np.ndarray, np.ndarray, int, int, int]) -> None:
    cands, pool, k, seed, block_rows = problem
    k = min(k, len(cands))
    radii = []
    for kk in range(1, k + 1):
        picks = greedy_k_center(cands, kk, pool=pool, seed=seed, block_rows=block_rows).picks
        radii.append(coverage_radius(cands, pool, picks))
    assert all(b <= a + 1e-5 for a, b in zip(radii, radii[1:], strict=False))


@PROPERTY_SETTINGS
@given(problems())
def test_smaller_k_is_a_prefix_and_hnsw_seeding_picks_the_same(
    problem: tuple[np.ndarray, np.ndarray, int, int, int],
) -> None:
    """Greedy is incremental (k picks = the first k of k+m picks), and the approximate pool seeding
    (hnswlib upper bounds, verified before a pick) changes nothing."""
    cands, pool, k, seed, block_rows = problem
    full = greedy_k_center(cands, k, pool=pool, seed=seed, block_rows=block_rows)
    half = greedy_k_center(cands, max(1, k // 2), pool=pool, seed=seed, block_rows=block_rows)
    assert full.picks[: len(half.picks)] == half.picks
    approx = greedy_k_center(cands, k, pool=pool, seed=seed, block_rows=block_rows, exact_max_pairs=0)
    assert approx.picks == full.picks  # both compare the same float64 distances
    assert np.array_equal(approx.pick_distances, full.pick_distances)
