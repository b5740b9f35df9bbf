"""Greedy k-center (farthest-point) selection on L2-normalised embeddings, seeded by the datapool.

Every candidate starts at its distance to the nearest datapool sample; each step picks the farthest
candidate and lowers the others' distances. Squared distances are used throughout
(|a-b|^2 = 2 - 2 a.b for unit vectors), which does not change any argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Exact seeding while candidates x pool stays below this many dot products; hnswlib above.
EXACT_SEEDING_MAX_PAIRS = 2_000_000_000
_BLOCK_BYTES = 64 * 1024 * 1024


@dataclass
class KCenterResult:
    picks: list[int]
    """Candidate indices in pick order."""
    pick_distances: np.ndarray
    """Distance of each pick to the nearest datapool-or-earlier-pick sample when it was picked."""
    pool_distances: np.ndarray
    """Each candidate's distance to its nearest datapool sample (inf when the pool is empty)."""


def _as_unit_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def nearest_pool_distance(
    candidates: np.ndarray, pool: np.ndarray, *, exact_max_pairs: int = EXACT_SEEDING_MAX_PAIRS
) -> np.ndarray:
    """Squared distance from each candidate to its nearest pool sample (inf if the pool is empty)."""
    candidates = _as_unit_float32(candidates)
    pool = _as_unit_float32(pool)
    n, m = len(candidates), len(pool)
    if m == 0:
        return np.full(n, np.inf, dtype=np.float32)
    if n * m <= exact_max_pairs:
        return exact_nearest_sq_distance(candidates, pool)
    return hnsw_nearest_sq_distance(candidates, pool)


def exact_nearest_sq_distance(candidates: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Blocked matrix products: memory stays at one block of similarities, never N x M."""
    n, m = len(candidates), len(pool)
    out = np.empty(n, dtype=np.float32)
    rows = max(1, _BLOCK_BYTES // (4 * m))
    for start in range(0, n, rows):
        sims = candidates[start : start + rows] @ pool.T
        out[start : start + rows] = 2.0 - 2.0 * sims.max(axis=1)
    np.maximum(out, 0.0, out=out)
    return out


def hnsw_nearest_sq_distance(
    candidates: np.ndarray, pool: np.ndarray, *, ef: int = 128, m_links: int = 16, threads: int = -1
) -> np.ndarray:
    """Approximate nearest pool sample with an hnswlib index over the pool."""
    import hnswlib

    index = hnswlib.Index(space="ip", dim=pool.shape[1])
    index.init_index(max_elements=len(pool), ef_construction=max(ef, 100), M=m_links, random_seed=0)
    index.add_items(pool, np.arange(len(pool)), num_threads=threads)
    index.set_ef(ef)
    labels, _ = index.knn_query(candidates, k=1, num_threads=threads)
    nearest = pool[labels[:, 0]]
    sims = np.einsum("ij,ij->i", candidates, nearest)
    return np.maximum(2.0 - 2.0 * sims, 0.0).astype(np.float32)


def greedy_k_center(
    candidates: np.ndarray,
    k: int,
    *,
    pool: np.ndarray | None = None,
    pool_sq_distances: np.ndarray | None = None,
    preselected: Sequence[int] = (),
    seed: int = 0,
) -> KCenterResult:
    """Pick k candidates, each the farthest from the datapool and the earlier picks.

    With an empty pool and nothing preselected, the first pick is drawn with `seed`. Ties go to
    the lowest candidate index. `preselected` picks (e.g. adopted uploads) count towards k.
    """
    candidates = _as_unit_float32(candidates)
    n = len(candidates)
    k = min(k, n)
    if pool_sq_distances is None:
        empty = np.empty((0, candidates.shape[1] if candidates.ndim == 2 else 0), np.float32)
        pool_sq_distances = nearest_pool_distance(candidates, pool if pool is not None else empty)
    d2 = pool_sq_distances.astype(np.float32, copy=True)
    picks: list[int] = []
    pick_d2: list[float] = []
    picked = np.zeros(n, dtype=bool)

    def take(i: int) -> None:
        pick_d2.append(float(d2[i]))
        picks.append(i)
        picked[i] = True
        np.minimum(d2, 2.0 - 2.0 * (candidates @ candidates[i]), out=d2)
        d2[picked] = -np.inf

    for i in preselected[:k]:
        if not picked[i]:
            take(int(i))
    if k > 0 and not picks and not np.isfinite(d2).any():
        take(int(np.random.default_rng(seed).integers(n)))
    while len(picks) < k:
        take(int(np.argmax(d2)))
    pool_d = np.sqrt(np.maximum(pool_sq_distances, 0.0))
    return KCenterResult(
        picks=picks, pick_distances=np.sqrt(np.maximum(np.array(pick_d2, np.float64), 0.0)), pool_distances=pool_d
    )
