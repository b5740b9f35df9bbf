"""Distances behind the report: stats, histograms, nearest neighbours and coverage.

All distances are Euclidean between L2-normalised embeddings (0 = identical, 2 = opposite), the
same metric the selection maximises.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datapool_pipeline.selection import nearest_pool_distance

HISTOGRAM_BINS = 30
# Exact all-pairs nearest neighbours up to this many points; hnswlib above.
EXACT_NN_MAX = 20_000


def stats(values: np.ndarray) -> dict[str, float | int | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0, "min": None, "mean": None, "median": None, "p90": None, "max": None}
    return {
        "count": int(values.size),
        "min": float(values.min()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p90": float(np.quantile(values, 0.9)),
        "max": float(values.max()),
    }


def shared_edges(*series: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Bin edges from 0 to the largest finite value of all series, so histograms compare bin by bin."""
    finite = [s[np.isfinite(s)] for s in series if s.size]
    top = max((float(s.max()) for s in finite if s.size), default=0.0)
    return np.linspace(0.0, top if top > 0 else 1.0, bins + 1)


def histogram(values: np.ndarray, edges: np.ndarray) -> dict[str, list[float] | list[int]]:
    values = np.asarray(values, dtype=np.float64)
    counts, _ = np.histogram(values[np.isfinite(values)], bins=edges)
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def nearest_distance(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest row of `others` (inf when `others` is empty)."""
    return np.sqrt(np.maximum(nearest_pool_distance(points, others), 0.0)).astype(np.float64)


def nearest_within(points: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest *other* point of the same set (inf for a single point)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = len(points)
    if n < 2:
        return np.full(n, np.inf)
    if n > EXACT_NN_MAX:
        return _hnsw_nearest_within(points)
    out = np.empty(n, dtype=np.float64)
    rows = max(1, (64 * 1024 * 1024) // (4 * n))
    for start in range(0, n, rows):
        sims = points[start : start + rows] @ points.T
        idx = np.arange(start, min(start + rows, n))
        sims[idx - start, idx] = -np.inf
        out[start : start + rows] = 2.0 - 2.0 * sims.max(axis=1)
    return np.sqrt(np.maximum(out, 0.0))


def _hnsw_nearest_within(points: np.ndarray) -> np.ndarray:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=points.shape[1])
    index.init_index(max_elements=len(points), ef_construction=128, M=16, random_seed=0)
    index.add_items(points, np.arange(len(points)))
    index.set_ef(128)
    labels, _ = index.knn_query(points, k=2)
    own = labels[:, 0] == np.arange(len(points))
    other = np.where(own, labels[:, 1], labels[:, 0])
    sims = np.einsum("ij,ij->i", points, points[other])
    return np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0)).astype(np.float64)


def coverage_distances(candidates: np.ndarray, pool: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Each candidate's distance to its nearest datapool-or-chosen sample (0 for the chosen ones)."""
    to_pool = nearest_distance(candidates, pool)
    if len(chosen) == 0:
        return to_pool
    return np.minimum(to_pool, nearest_distance(candidates, candidates[chosen]))


def comparison(ours: np.ndarray, random: np.ndarray) -> dict[str, Any]:
    """Stats and histograms on shared bins for our selection vs the random baseline."""
    edges = shared_edges(ours, random)
    return {
        "ours": {**stats(ours), "histogram": histogram(ours, edges)},
        "random": {**stats(random), "histogram": histogram(random, edges)},
    }
