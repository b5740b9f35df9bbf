"""The run config's strategies combined into one greedy selection, given the datapool.

DIVERSITY drives the greedy loop: each step adds one candidate and lowers every other candidate's
distance to the nearest datapool-or-picked sample. Alone, it is exactly `greedy_k_center` (the farthest
candidate each step). With TYPICALITY, each step picks the candidate with the best combined score

    strength_diversity * d / max(d)  +  strength_typicality * typicality

where d is the distance to the nearest datapool-or-picked sample (normalised over the remaining
candidates, so it stays datapool-aware) and typicality is the kNN density of the new data normalised to
[0, 1] (1: the densest candidate). SIMILARITY adds `strength_similarity * similarity` the same way: each
candidate's maximum cosine similarity to the query embeddings (text prompts or query images), normalised
over the candidates to [0, 1]. WEIGHTS (METADATA input) adds `strength * value` of a built-in metadata
key min-max normalised to [0, 1] (selection/metadata.py weights_bonus, passed in as `metadata_bonus`);
THRESHOLD filters the candidates before they get here. BALANCE (a categorical key) adds, at every step,
`strength * deficit(category) / max(deficit)`, where deficit(c) = max(target(c) - share(c), 0) and share is
over the datapool's samples and the picks so far that have a value: the candidates of the category furthest
under its target get the full strength, those of categories at or over target (or without a value) nothing.
`stopping_condition_minimum_distance` ends the selection once the
next pick would be closer than it to the datapool and the earlier picks. For DIVERSITY alone the next
pick is the farthest remaining candidate, and its distance never grows from one pick to the next. With
TYPICALITY the next pick is the best-scoring candidate: the farthest one is then usually an outlier that
TYPICALITY deliberately skips, so testing the farthest candidate would keep selecting until only
outliers are left (measured in benchmarks/bench_quality.py: 1979 of 2000 picks instead of stopping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datapool_pipeline.config import SelectionConfig, Strategy
from datapool_pipeline.selection import kcenter
from datapool_pipeline.selection.kcenter import KCenterResult, greedy_k_center

# Typicality: mean cosine distance to this many nearest other candidates (fewer when fewer exist).
TYPICALITY_NEIGHBOURS = 10
# Exact kNN over the candidates up to this many candidates (blocked N x N products); hnswlib above.
TYPICALITY_EXACT_MAX = 20_000
_BLOCK_ROWS = 1024

REQUESTED = "requested"
COPIES = "only_copies_left"
MINIMUM_DISTANCE = "minimum_distance"


@dataclass
class StrategyResult:
    result: KCenterResult
    stop_reason: str
    """Why the selection ended: `requested` (k picks), `only_copies_left` or `minimum_distance`."""
    first_distance: float
    """Distance to the datapool (and preselected picks) of the first sample the greedy part picked or
    would have picked (for DIVERSITY alone: the farthest candidate; inf with an empty pool)."""


@dataclass
class BalanceTerm:
    """BALANCE on one categorical key: categories (the target's first), each candidate's category code
    (-1: no value), the target share per category (0 for categories not in the target) and the datapool's
    count per category."""

    key: str
    categories: list[str]
    codes: np.ndarray
    target: np.ndarray
    pool_counts: np.ndarray
    strength: float = 1.0
    listed: int = 0
    """How many of `categories` the target lists (the first ones)."""

    def bonus(self, picked_counts: np.ndarray) -> np.ndarray:
        """Per candidate: strength * (its category's deficit / the largest deficit), given the picks so far."""
        counts = self.pool_counts + picked_counts
        total = counts.sum()
        share = counts / total if total else np.zeros(len(counts))
        deficit = np.maximum(self.target - share, 0.0)
        top = deficit.max(initial=0.0)
        if top <= 0:
            return np.zeros(len(self.codes), np.float64)
        per_category = np.append(self.strength * deficit / top, 0.0)  # code -1 -> the appended 0
        return per_category[self.codes]


def typicality_scores(candidates: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """kNN density of each candidate among the candidates, normalised to [0, 1] (1: densest).

    Density is the negated mean cosine distance to the `neighbours` nearest other candidates: exact for
    up to TYPICALITY_EXACT_MAX candidates, hnswlib (approximate neighbours) above.
    """
    x = np.ascontiguousarray(candidates, np.float32)
    n = len(x)
    kk = min(neighbours, n - 1)
    if kk <= 0:
        return np.ones(n, np.float64)
    mean_dist = np.empty(n, np.float64)
    if n <= TYPICALITY_EXACT_MAX:
        for start in range(0, n, _BLOCK_ROWS):
            sims = x[start : start + _BLOCK_ROWS] @ x.T
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf  # not its own neighbour
            top = np.partition(sims, n - kk, axis=1)[:, n - kk :]
            mean_dist[start : start + len(sims)] = 1.0 - top.mean(axis=1)
    else:
        index = kcenter.build_hnsw_index(x)
        index.set_ef(max(kcenter.HNSW_EF, 2 * (kk + 1)))
        labels, dists = index.knn_query(x, k=kk + 1)
        own = labels == np.arange(n)[:, None]
        # Drop each row's own entry (or, if the search missed it, its farthest neighbour).
        keep = ~own
        missing = keep.all(axis=1)
        keep[missing, -1] = False
        mean_dist = np.where(keep, dists, 0.0).sum(axis=1) / kk
    spread = mean_dist.max() - mean_dist.min()
    if spread <= 0:
        return np.ones(n, np.float64)
    return (mean_dist.max() - mean_dist) / spread


def similarity_scores(candidates: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIMILARITY: each candidate's maximum cosine similarity to the query embeddings (unit vectors), raw
    (-1..1) and normalised over the candidates to [0, 1] (1: the most similar candidate; all 1 when equal)."""
    x = np.ascontiguousarray(candidates, np.float32)
    q = np.ascontiguousarray(queries, np.float32).reshape(-1, x.shape[1] if x.ndim == 2 else 0)
    if len(x) == 0 or len(q) == 0:
        return np.zeros(len(x), np.float64), np.zeros(len(x), np.float64)
    raw = np.empty(len(x), np.float64)
    for start in range(0, len(x), _BLOCK_ROWS * 16):
        raw[start : start + _BLOCK_ROWS * 16] = (x[start : start + _BLOCK_ROWS * 16] @ q.T).max(axis=1)
    spread = raw.max() - raw.min()
    normalised = (raw - raw.min()) / spread if spread > 0 else np.ones(len(x), np.float64)
    return raw, normalised


def select(
    candidates: np.ndarray,
    k: int,
    selection: SelectionConfig,
    *,
    similarity: np.ndarray | None = None,
    metadata_bonus: np.ndarray | None = None,
    pool: np.ndarray | None = None,
    pool_index: Any = None,
    exact_max_pairs: int = kcenter.EXACT_SEEDING_MAX_PAIRS,
    seed: int = 0,
    preselected: Sequence[int] = (),
    balance: Sequence[BalanceTerm] = (),
) -> StrategyResult:
    """Up to k picks by the configured strategies (DIVERSITY, optionally TYPICALITY, SIMILARITY, WEIGHTS,
    BALANCE).

    `preselected` picks (adopted uploads) come first and count towards k; the minimum distance never
    removes them. Exact copies of datapool samples or of picks are never picked.
    """
    diversity = selection.strategy("DIVERSITY")
    assert diversity is not None, "the run config requires DIVERSITY"
    typicality = selection.strategy("TYPICALITY")
    similar = selection.strategy("SIMILARITY")
    if similar is not None and similarity is None:
        raise ValueError("SIMILARITY is configured: pass the candidates' normalised similarity scores")
    if metadata_bonus is None and selection.metadata_entries("WEIGHTS"):
        raise ValueError("WEIGHTS is configured: pass metadata_bonus (selection.metadata.weights_bonus)")
    if len(balance) != len(selection.metadata_entries("BALANCE")):
        raise ValueError("BALANCE is configured: pass one BalanceTerm per entry (workflow/user_metadata.py)")
    if typicality is None and similar is None and metadata_bonus is None and not balance:
        return _diversity_only(candidates, k, diversity, pool=pool, pool_index=pool_index,
                               exact_max_pairs=exact_max_pairs, seed=seed, preselected=preselected)
    x = np.ascontiguousarray(candidates, np.float32)
    if pool_index is not None and pool is not None and len(pool) and len(x) * len(pool) > exact_max_pairs:
        pool_sq = kcenter.hnsw_nearest_sq_distance(x, pool, index=pool_index)
    else:
        empty = np.empty((0, x.shape[1] if x.ndim == 2 else 0), np.float32)
        pool_sq = kcenter.nearest_pool_distance(x, pool if pool is not None else empty,
                                                exact_max_pairs=exact_max_pairs)
    return weighted_greedy(
        x, k, pool_sq, typicality_scores(x) if typicality is not None else np.zeros(len(x)),
        diversity_strength=diversity.strength,
        typicality_strength=typicality.strength if typicality is not None else 0.0,
        minimum_distance=diversity.stopping_condition_minimum_distance, preselected=preselected,
        bonus=_add_bonus(
            similar.strength * np.asarray(similarity, np.float64) if similar is not None else None, metadata_bonus
        ),
        balance=balance,
    )


def _add_bonus(bonus: np.ndarray | None, metadata_bonus: np.ndarray | None) -> np.ndarray | None:
    """The per-candidate score terms beyond diversity and typicality, summed (None when there are none)."""
    if metadata_bonus is None:
        return bonus
    extra = np.asarray(metadata_bonus, np.float64)
    return extra if bonus is None else bonus + extra


def _diversity_only(
    candidates: np.ndarray, k: int, diversity: Strategy, *, preselected: Sequence[int], **seeding: Any
) -> StrategyResult:
    result = greedy_k_center(candidates, k, preselected=preselected, **seeding)
    n_pre = len({int(i) for i in preselected[:k]})
    greedy = result.pick_distances[n_pre:]
    first = float(greedy[0]) if len(greedy) else float(np.max(result.pool_distances, initial=0.0))
    reason = REQUESTED if len(result.picks) >= min(k, len(candidates)) else COPIES
    minimum = diversity.stopping_condition_minimum_distance
    if minimum is not None:
        # Greedy pick distances never increase: cut at the first one closer than the minimum.
        below = np.flatnonzero(greedy < minimum)
        if len(below):
            cut = n_pre + int(below[0])
            result = KCenterResult(result.picks[:cut], result.pick_distances[:cut], result.pool_distances)
            reason = MINIMUM_DISTANCE
    return StrategyResult(result, reason, first)


def weighted_greedy(
    candidates: np.ndarray,
    k: int,
    pool_sq_distances: np.ndarray,
    typicality: np.ndarray,
    *,
    diversity_strength: float = 1.0,
    typicality_strength: float = 1.0,
    minimum_distance: float | None = None,
    preselected: Sequence[int] = (),
    bonus: np.ndarray | None = None,
    balance: Sequence[BalanceTerm] = (),
) -> StrategyResult:
    """Greedy selection by the combined score (module docstring), exact: every candidate's distance is
    updated after every pick (O(N d) per pick). Ties go to the lowest index. `bonus` (per candidate, e.g.
    strength_similarity * similarity) is added to every step's score; each BALANCE term's bonus is
    recomputed every step from the categories picked so far."""
    x = np.ascontiguousarray(candidates, np.float32)
    n = len(x)
    k = min(k, n)
    d2 = np.asarray(pool_sq_distances, np.float64).copy()
    pool_d = np.sqrt(np.maximum(d2, 0.0))
    typ = np.asarray(typicality, np.float64)
    picked = np.zeros(n, bool)
    picks: list[int] = []
    pick_d2: list[float] = []
    picked_counts = [np.zeros(len(term.categories), np.int64) for term in balance]

    def take(i: int) -> None:
        for term, counts in zip(balance, picked_counts, strict=True):
            if term.codes[i] >= 0:
                counts[term.codes[i]] += 1
        picks.append(i)
        pick_d2.append(float(d2[i]))
        picked[i] = True
        step = 2.0 - 2.0 * (x @ x[i]).astype(np.float64)
        step[step < kcenter.DUPLICATE_SQ_DISTANCE] = 0.0
        np.minimum(d2, step, out=d2)

    for i in preselected[:k]:
        if not picked[int(i)]:
            take(int(i))
    first = float("nan")
    reason = REQUESTED
    while len(picks) < k:
        available = ~picked & (d2 > 0.0)  # a copy of the pool or of a pick adds nothing
        if not available.any():
            reason = COPIES
            break
        dmax2 = float(d2[available].max())
        # An empty pool and nothing picked yet: every candidate is equally (infinitely) far.
        diversity = np.where(np.isinf(d2), 1.0, 0.0) if np.isinf(dmax2) else np.sqrt(d2 / dmax2)
        score = diversity_strength * diversity + typicality_strength * typ
        if bonus is not None:
            score = score + bonus
        for term, counts in zip(balance, picked_counts, strict=True):
            score = score + term.bonus(counts)
        score[~available] = -np.inf
        best = int(np.argmax(score))
        distance = float(np.sqrt(d2[best]))
        if np.isnan(first):
            first = distance
        if minimum_distance is not None and distance < minimum_distance:
            reason = MINIMUM_DISTANCE
            break
        take(best)
    if np.isnan(first):
        first = 0.0
    result = KCenterResult(picks, np.sqrt(np.maximum(np.array(pick_d2, np.float64), 0.0)), pool_d)
    return StrategyResult(result, reason, first)
