"""The run config's strategies combined into one greedy selection, given the datapool.

DIVERSITY drives the greedy loop: each step adds one candidate and lowers every other candidate's
distance d to the nearest datapool-or-picked sample (capped at 2, the largest distance of unit vectors, so
an empty datapool counts as "as far as can be"). Alone, it is exactly `greedy_k_center` (the farthest
candidate each step). Otherwise each step picks the candidate with the best combined score

    strength_DIVERSITY * u / max(u)  +  strength_TYPICALITY * g / max(g)  +  bonuses

with both maxima over the candidates that can still be picked (so each term stays normalised to [0, 1] as
the selection goes on, and datapool-aware: d counts the datapool).

- Without TYPICALITY, u = d (the farthest candidate scores 1) and there is no g term.
- TYPICALITY (issue 13) uses each candidate's weight among the new data, w in [0, 1] (`typicality_neighbours`:
  sqrt(kNN density * relative density), 1: the most typical candidate), twice. u = w * d: the diversity term
  prefers far candidates in dense regions, or in sparse regions that are as sparse as their surroundings
  (a rare class), over far isolated ones (outliers: noise, black or glitched frames). g is the coverage the
  candidate would bring to its neighbourhood: g_i = w_i d_i + sum over its TYPICALITY_NEIGHBOURS nearest
  new samples j of w_j * max(d_j - |x_i - x_j|, 0), i.e. how much picking it lowers the density-weighted
  distance of the new data to its nearest datapool-or-picked sample (greedy facility location on the kNN
  graph). Unlike the static density it replaced, g falls to 0 where the datapool or earlier picks already
  cover the new data, so dense regions stop attracting picks once they are covered; it lowers the mean
  distance of the new data to the selection (benchmarks/bench_quality.py).
- SIMILARITY adds `strength_similarity * similarity`: each candidate's maximum cosine similarity to the query
  embeddings (text prompts or query images), normalised over the candidates to [0, 1]. WEIGHTS (METADATA
  input) adds `strength * value` of a metadata key min-max normalised to [0, 1] (selection/metadata.py
  weights_bonus, passed in as `metadata_bonus`); THRESHOLD filters the candidates before they get here.
  BALANCE (a categorical key) adds, at every step, `strength * deficit(category) / max(deficit)`, where
  deficit(c) = max(target(c) - share(c), 0) and share is over the datapool's samples and the picks so far
  that have a value: the candidates of the category furthest under its target get the full strength, those
  of categories at or over target (or without a value) nothing.

Near-copies: a step only picks among candidates whose u is at least NOVELTY_FLOOR (2%) of the largest u, so a
strong bonus cannot buy a near-copy of a pick or of a datapool sample (its d, hence u, is tiny) while farther
candidates remain; exact copies (d = 0) are never picked. DIVERSITY alone picks the largest u and is unaffected.

`stopping_condition_minimum_distance` m (the vendor's: stop once the farthest candidate is closer than m
to the datapool and the picks): only candidates at least m away can be picked, and the selection stops when
none is left. Every pick is then at least m from the datapool and the earlier picks, and when the run
stops for this reason every new sample is closer than m to the datapool or a pick. For DIVERSITY alone
this is exactly the k-center cut. `datapool_margin` t (ours, default 0) asks more of the distance to the
datapool than to this run's picks: a candidate closer than m + t to a datapool sample is never picked. A
threshold alone cannot stop a later run on re-encoded copies of a run's data from adding samples: run 1
leaves samples just under m, and a copy that moves outward crosses it; with the margin, a copy must move
by more than t to count (benchmarks/bench_quality.py, docs/performance.md).

Two implementations give the same picks: `weighted_greedy` (every candidate rescored after every pick,
O(N d) per pick) and `lazy_weighted_greedy` (candidates in blocks with upper bounds of their score: only
blocks that can still hold the best candidate are brought up to date, by one matrix product over the
picks they have not seen); `select` uses the lazy one from LAZY_MIN_CANDIDATES candidates on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datapool_pipeline.config import SelectionConfig, Strategy
from datapool_pipeline.selection import kcenter
from datapool_pipeline.selection.kcenter import KCenterResult, greedy_k_center

# Typicality: mean cosine distance to this many nearest other candidates (fewer when fewer exist).
TYPICALITY_NEIGHBOURS = 10
# Relative density (local outlier factor) over this many nearest: groups smaller than this that sit next to
# denser data count as outliers (LOF's MinPts; benchmarks/bench_quality.py).
RELATIVE_NEIGHBOURS = 30
# Exact kNN over the candidates up to this many candidates (blocked N x N products); hnswlib above.
TYPICALITY_EXACT_MAX = 20_000
_BLOCK_ROWS = 1024
# select() uses lazy_weighted_greedy from this many candidates on. Measured (benchmarks/bench_quality.py --quick, 512-d,
# DIVERSITY + TYPICALITY 0.5, k = 200, OpenBLAS's default 2 threads on a loaded 2-core machine; its products through
# kcenter.small_product, one thread): 2.5-8.5x faster at 2,000 and 5,000 candidates, 2.0-6.8x at 20,000; 0.7-1.4x at
# 1,000, 0.2-0.3x at 500 (where both take under 0.2 s). On an idle machine: 0.3-0.4x at 2,000 (0.06 s vs 0.2 s),
# 0.5-1.0x at 5,000, 1.3-2.3x at 20,000 (docs/performance.md).
LAZY_MIN_CANDIDATES = 2_000
# Rows per block of lazy_weighted_greedy.
LAZY_BLOCK_ROWS = 1024
# A pick's diversity term u must be at least this share of the largest u among the pickable candidates, so that a
# strong bonus (SIMILARITY, WEIGHTS, BALANCE) never buys a near-copy of a pick or of a datapool sample while farther
# candidates remain (DIVERSITY alone picks the largest u, so it is never affected).
NOVELTY_FLOOR = 0.02
# Distances are capped here: the largest distance of unit vectors (an empty datapool is "as far as can be").
_FAR = 2.0

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
    density: np.ndarray | None = None
    """TYPICALITY: each candidate's kNN density in [0, 1] (Neighbourhood.density; what the report shows);
    None without it."""


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

    def category_bonus(self, picked_counts: np.ndarray) -> np.ndarray:
        """Per category, then 0 for code -1 (appended): strength * (its deficit / the largest deficit)."""
        counts = self.pool_counts + picked_counts
        total = counts.sum()
        share = counts / total if total else np.zeros(len(counts))
        deficit = np.maximum(self.target - share, 0.0)
        top = deficit.max(initial=0.0)
        if top <= 0:
            return np.zeros(len(self.categories) + 1, np.float64)
        return np.append(self.strength * deficit / top, 0.0)  # code -1 -> the appended 0

    def bonus(self, picked_counts: np.ndarray) -> np.ndarray:
        """Per candidate: strength * (its category's deficit / the largest deficit), given the picks so far."""
        return self.category_bonus(picked_counts)[self.codes]


def typicality_scores(candidates: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """TYPICALITY's weight of each candidate in [0, 1] (1: the most typical; Neighbourhood.scores)."""
    return typicality_neighbours(candidates, neighbours).scores


@dataclass
class Neighbourhood:
    scores: np.ndarray
    """TYPICALITY's weight w in [0, 1]: sqrt(density * relative), divided by its maximum."""
    indices: np.ndarray
    """(N, K) each candidate's K nearest other candidates (K = min(neighbours, N - 1)), nearest first."""
    distances: np.ndarray
    """(N, K) their Euclidean distances (float64)."""
    density: np.ndarray | None = None
    """kNN density in [0, 1] (1: densest): the negated mean cosine distance to the K neighbours, min-max."""
    relative: np.ndarray | None = None
    """Relative density in (0, 1]: the mean over the RELATIVE_NEIGHBOURS nearest of their mean distance to
    their own RELATIVE_NEIGHBOURS nearest, divided by the candidate's own, capped at 1 (1 / local outlier
    factor)."""


def typicality_neighbours(candidates: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS,
                          relative_neighbours: int = RELATIVE_NEIGHBOURS) -> Neighbourhood:
    """Each candidate's nearest other candidates and its TYPICALITY weight.

    The weight is sqrt(density * relative) (Neighbourhood): the absolute kNN density alone (min-max over the
    candidates) drives the sparsest inliers, e.g. a rare class, to ~0 together with the outliers; the
    relative density (local outlier factor) tells them apart: a member of a sparse but coherent group has
    neighbours about as sparse as itself (relative ~1), an isolated sample or a group smaller than
    `relative_neighbours` sits next to denser data (relative < 1). Neighbours are exact for up to
    TYPICALITY_EXACT_MAX candidates, hnswlib (approximate) above.
    """
    x = np.ascontiguousarray(candidates, np.float32)
    n = len(x)
    kk = max(min(neighbours, n - 1), 0)
    mm = max(min(max(relative_neighbours, neighbours), n - 1), 0)
    if kk == 0:
        ones = np.ones(n, np.float64)
        return Neighbourhood(ones, np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float64), ones, ones)
    indices, cos_dist = _nearest_others(x, mm)
    order = np.argsort(cos_dist, axis=1, kind="stable")  # nearest first
    indices = np.take_along_axis(indices, order, axis=1)
    cos_dist = np.maximum(np.take_along_axis(cos_dist, order, axis=1), 0.0)
    mean_dist = cos_dist[:, :kk].mean(axis=1)
    spread = mean_dist.max() - mean_dist.min()
    density = np.ones(n, np.float64) if spread <= 0 else (mean_dist.max() - mean_dist) / spread
    reach = np.sqrt(2.0 * cos_dist).mean(axis=1)  # mean Euclidean distance to the mm nearest
    around = reach[indices].mean(axis=1)
    relative = np.where(reach > around, around / np.maximum(reach, 1e-12), 1.0)
    weight = np.sqrt(density * relative)
    top = weight.max()
    scores = weight / top if top > 0 else np.ones(n, np.float64)
    return Neighbourhood(scores, indices[:, :kk], np.sqrt(2.0 * cos_dist[:, :kk]), density, relative)


def _nearest_others(x: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, kk) each row's kk nearest other rows (unordered) and their cosine distances (float64)."""
    n = len(x)
    indices = np.zeros((n, kk), np.int64)
    cos_dist = np.zeros((n, kk), np.float64)
    if n <= TYPICALITY_EXACT_MAX:
        for start in range(0, n, _BLOCK_ROWS):
            sims = x[start : start + _BLOCK_ROWS] @ x.T
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf  # not its own neighbour
            top = np.argpartition(sims, n - kk, axis=1)[:, n - kk :]
            indices[start : start + len(sims)] = top
            cos_dist[start : start + len(sims)] = 1.0 - np.take_along_axis(sims, top, axis=1)
        return indices, cos_dist
    index = kcenter.build_hnsw_index(x)
    index.set_ef(max(kcenter.HNSW_EF, 2 * (kk + 1)))
    labels, dists = index.knn_query(x, k=kk + 1)
    own = labels == np.arange(n)[:, None]
    # Drop each row's own entry (or, if the search missed it, its farthest neighbour).
    keep = ~own
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    order = np.argsort(~keep, axis=1, kind="stable")[:, :kk]  # the kept entries, in their order
    return (np.take_along_axis(labels, order, axis=1).astype(np.int64),
            np.take_along_axis(dists, order, axis=1).astype(np.float64))


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
    plain = typicality is None and similar is None and metadata_bonus is None and not balance
    has_pool = pool_index is not None or (pool is not None and len(pool) > 0)
    if plain and not (diversity.datapool_margin and has_pool):  # the combined greedies apply the margin
        return _diversity_only(candidates, k, diversity, pool=pool, pool_index=pool_index,
                               exact_max_pairs=exact_max_pairs, seed=seed, preselected=preselected)
    x = np.ascontiguousarray(candidates, np.float32)
    if pool_index is not None and pool is not None and len(pool) and len(x) * len(pool) > exact_max_pairs:
        pool_sq = kcenter.hnsw_nearest_sq_distance(x, pool, index=pool_index)
    else:
        empty = np.empty((0, x.shape[1] if x.ndim == 2 else 0), np.float32)
        pool_sq = kcenter.nearest_pool_distance(x, pool if pool is not None else empty,
                                                exact_max_pairs=exact_max_pairs)
    greedy = lazy_weighted_greedy if len(x) >= LAZY_MIN_CANDIDATES else weighted_greedy
    neighbourhood = typicality_neighbours(x) if typicality is not None else None
    outcome = greedy(
        x, k, pool_sq, neighbourhood,
        diversity_strength=diversity.strength,
        typicality_strength=typicality.strength if typicality is not None else 0.0,
        minimum_distance=diversity.stopping_condition_minimum_distance,
        datapool_margin=diversity.datapool_margin or 0.0, preselected=preselected, bonus=_add_bonus(
            similar.strength * np.asarray(similarity, np.float64) if similar is not None else None, metadata_bonus
        ),
        balance=balance,
    )
    outcome.density = neighbourhood.density if neighbourhood is not None else None
    return outcome


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


@dataclass
class _Objective:
    """The combined score's parts (module docstring), shared by both greedy implementations so that they
    compute every score with the same operations in the same order."""

    diversity_strength: float
    typicality_strength: float
    weight: np.ndarray
    """w per candidate: the TYPICALITY weight (ones without TYPICALITY)."""
    neighbours: np.ndarray | None
    neighbour_distances: np.ndarray | None
    bonus: np.ndarray | None
    balance: Sequence[BalanceTerm]

    @classmethod
    def build(cls, n: int, neighbourhood: Neighbourhood | None, diversity_strength: float,
              typicality_strength: float, bonus: np.ndarray | None, balance: Sequence[BalanceTerm]) -> _Objective:
        if neighbourhood is None:
            return cls(diversity_strength, 0.0, np.ones(n, np.float64), None, None, bonus, balance)
        return cls(diversity_strength, typicality_strength, np.asarray(neighbourhood.scores, np.float64),
                   neighbourhood.indices, neighbourhood.distances, bonus, balance)

    def u(self, c: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The diversity term before normalisation: w * d."""
        return self.weight[rows] * c[rows]

    def g(self, c: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """TYPICALITY's coverage gain over the kNN neighbourhood (zeros without TYPICALITY)."""
        if self.neighbours is None or self.neighbour_distances is None:
            return np.zeros(len(rows), np.float64)
        nb = self.neighbours[rows]
        gain = self.weight[nb] * np.maximum(c[nb] - self.neighbour_distances[rows], 0.0)
        return self.weight[rows] * c[rows] + gain.sum(axis=1)

    def extras(
        self, rows: np.ndarray, per_category: Sequence[np.ndarray]
    ) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """The bonus and each BALANCE term's bonus of `rows`."""
        return (self.bonus[rows] if self.bonus is not None else None,
                [per_cat[term.codes[rows]] for term, per_cat in zip(self.balance, per_category, strict=True)])

    def scores(self, u: np.ndarray, g: np.ndarray, top_u: float, top_g: float, bonus: np.ndarray | None,
               balance: Sequence[np.ndarray]) -> np.ndarray:
        """Combined scores from u and g, the maxima over the pickable candidates and the extras (per row, or
        per block for an upper bound: every operation is monotone and in the same order, so a block's bound
        from its largest u, g, bonus and BALANCE bonus is never below any of its rows' scores)."""
        score = self.diversity_strength * u / top_u if top_u > 0 else np.zeros(len(u), np.float64)
        if self.neighbours is not None and top_g > 0:
            score = score + self.typicality_strength * g / top_g
        if bonus is not None:
            score = score + bonus
        for part in balance:
            score = score + part
        return score


class _Picks:
    """The picks so far: their order, squared distances when picked and BALANCE category counts."""

    def __init__(self, balance: Sequence[BalanceTerm]) -> None:
        self.balance = balance
        self.picks: list[int] = []
        self.sq_distances: list[float] = []
        self.counts = [np.zeros(len(term.categories), np.int64) for term in balance]

    def __len__(self) -> int:
        return len(self.picks)

    def add(self, i: int, sq_distance: float) -> None:
        for term, counts in zip(self.balance, self.counts, strict=True):
            if term.codes[i] >= 0:
                counts[term.codes[i]] += 1
        self.picks.append(i)
        self.sq_distances.append(sq_distance)

    def per_category(self) -> list[np.ndarray]:
        """Each BALANCE term's bonus per category at this step."""
        return [term.category_bonus(counts) for term, counts in zip(self.balance, self.counts, strict=True)]

    def outcome(self, pool_d: np.ndarray, reason: str, first: float) -> StrategyResult:
        distances = np.sqrt(np.maximum(np.array(self.sq_distances, np.float64), 0.0))
        return StrategyResult(KCenterResult(self.picks, distances, pool_d), reason, 0.0 if np.isnan(first) else first)


def _near_pool(pool_d: np.ndarray, minimum_distance: float | None, datapool_margin: float) -> np.ndarray | None:
    """Candidates that `datapool_margin` keeps from being picked (None without a margin)."""
    if not datapool_margin:
        return None
    return pool_d < (minimum_distance or 0.0) + datapool_margin


def _capped(d2: np.ndarray) -> np.ndarray:
    return np.minimum(np.sqrt(np.maximum(d2, 0.0)), _FAR)


def weighted_greedy(
    candidates: np.ndarray,
    k: int,
    pool_sq_distances: np.ndarray,
    neighbourhood: Neighbourhood | None = None,
    *,
    diversity_strength: float = 1.0,
    typicality_strength: float = 1.0,
    minimum_distance: float | None = None,
    datapool_margin: float = 0.0,
    preselected: Sequence[int] = (),
    bonus: np.ndarray | None = None,
    balance: Sequence[BalanceTerm] = (),
) -> StrategyResult:
    """Greedy selection by the combined score (module docstring), the reference implementation: every
    candidate's distance and score are updated after every pick (O(N d) per pick). Ties go to the lowest
    index. `neighbourhood` (typicality_neighbours) is given when TYPICALITY is configured. `bonus` (per
    candidate, e.g. strength_similarity * similarity) is added to every step's score; each BALANCE term's
    bonus is recomputed every step from the categories picked so far. With `datapool_margin` t, candidates
    closer than (minimum_distance or 0) + t to the datapool are never picked."""
    x = np.ascontiguousarray(candidates, np.float32)
    n = len(x)
    k = min(k, n)
    d2 = np.asarray(pool_sq_distances, np.float64).copy()
    pool_d = np.sqrt(np.maximum(d2, 0.0))
    objective = _Objective.build(n, neighbourhood, diversity_strength, typicality_strength, bonus, balance)
    rows = np.arange(n)
    picked = np.zeros(n, bool)
    picks = _Picks(balance)
    near_pool = _near_pool(pool_d, minimum_distance, datapool_margin)

    def take(i: int) -> None:
        picks.add(i, float(d2[i]))
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
        open_ = ~picked & (d2 > 0.0)  # a copy of the pool or of a pick adds nothing
        eligible = open_ if minimum_distance is None else open_ & (np.sqrt(d2) >= minimum_distance)
        if near_pool is not None:
            eligible = eligible & ~near_pool
        if not eligible.any():
            reason = MINIMUM_DISTANCE if open_.any() else COPIES
            if np.isnan(first):
                first = float(np.sqrt(d2[open_].max())) if open_.any() else 0.0
            break
        c = _capped(d2)
        u, g = objective.u(c, rows), objective.g(c, rows)
        per_category = picks.per_category()
        top_u = float(u[eligible].max())
        score = objective.scores(u, g, top_u, float(g[eligible].max()), *objective.extras(rows, per_category))
        score[~eligible | (u < NOVELTY_FLOOR * top_u)] = -np.inf
        best = int(np.argmax(score))
        if np.isnan(first):
            first = float(np.sqrt(d2[best]))
        take(best)
    return picks.outcome(pool_d, reason, first)


def lazy_weighted_greedy(
    candidates: np.ndarray,
    k: int,
    pool_sq_distances: np.ndarray,
    neighbourhood: Neighbourhood | None = None,
    *,
    diversity_strength: float = 1.0,
    typicality_strength: float = 1.0,
    minimum_distance: float | None = None,
    datapool_margin: float = 0.0,
    preselected: Sequence[int] = (),
    bonus: np.ndarray | None = None,
    balance: Sequence[BalanceTerm] = (),
    block_rows: int = LAZY_BLOCK_ROWS,
) -> StrategyResult:
    """The picks of `weighted_greedy`, without rescoring every candidate after every pick.

    Distances only fall as picks are added, so a candidate's u and g computed earlier are upper bounds of
    their current values. Each row keeps such stale u and g and how many picks its distance has seen; each
    block of `block_rows` rows keeps upper bounds of its rows' largest u and g. A step (1) finds the exact
    maxima of u and g (the normalisers) by bringing up to date the rows on top of them until the top row is
    exact, (2) bounds every block's best score from its largest u, g, bonus and BALANCE bonus, and (3) brings
    up to date, block by block in the order of these bounds, the rows whose bound reaches the best exact
    score found so far. A row is brought up to date (with TYPICALITY: with its neighbours) by one matrix
    product with the picks it has not seen; each (row, pick) distance is computed at most once. Ties go to
    the lowest index, as in weighted_greedy.
    """
    x = np.ascontiguousarray(candidates, np.float32)
    n = len(x)
    k = min(k, n)
    c2 = np.asarray(pool_sq_distances, np.float64).copy()
    pool_d = np.sqrt(np.maximum(c2, 0.0))
    objective = _Objective.build(n, neighbourhood, diversity_strength, typicality_strength, bonus, balance)
    nbrs = objective.neighbours
    cap = _capped(c2)
    applied = np.zeros(n, np.int64)  # picks each row's c2 has seen
    pick_vectors = np.empty((max(k, 1), x.shape[1] if x.ndim == 2 else 0), np.float32)
    t = 0  # picks so far
    picked = np.zeros(n, bool)
    closed = c2 <= 0.0  # picked, a copy, or closer than the minimum distance: never pickable (all monotone)
    if minimum_distance is not None:
        closed |= pool_d < minimum_distance
    near_pool = _near_pool(pool_d, minimum_distance, datapool_margin)
    if near_pool is not None:
        closed |= near_pool
    everything = np.arange(n)
    u_st = np.where(closed, -np.inf, objective.u(cap, everything))  # exact at step 0, upper bounds later
    g_st = np.where(closed, -np.inf, objective.g(cap, everything))
    g_exact_at = np.zeros(n, np.int64)  # the step at which the row's g_st was exact (it and its neighbours fresh)
    picks = _Picks(balance)
    size = max(int(block_rows), 1)
    n_blocks = (n + size - 1) // size

    def per_block(values: np.ndarray, fill: float = -np.inf) -> np.ndarray:
        padded = np.full(n_blocks * size, fill)
        padded[:n] = values
        return padded.reshape(n_blocks, size).max(axis=1)

    top_u, top_g = per_block(u_st), per_block(g_st)  # upper bounds of each block's largest u_st / g_st
    top_bonus = per_block(bonus) if bonus is not None else None
    present = []  # per BALANCE term: (blocks, categories + 1) which categories each block holds
    for term in balance:
        held = np.zeros((n_blocks, len(term.categories) + 1), bool)
        held[everything // size, term.codes] = True  # code -1 -> the last column
        present.append(held)

    def refresh(rows: np.ndarray) -> None:
        """Bring rows' distances up to date with every pick so far."""
        rows = rows[applied[rows] < t]
        if not len(rows):
            return
        rows = rows[np.argsort(applied[rows], kind="stable")]
        seen = applied[rows]
        cuts = [0]
        for s in (np.flatnonzero(np.diff(seen)) + 1).tolist():
            if s - cuts[-1] >= 64:  # group rows that have seen about as many picks
                cuts.append(s)
        cuts.append(len(rows))
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            for s in range(a, b, 2048):
                chunk, chunk_seen = rows[s : min(b, s + 2048)], seen[s : min(b, s + 2048)]
                best = np.full(len(chunk), np.inf)
                for col in range(int(chunk_seen[0]), t, 1024):
                    sims = kcenter.small_product(x[chunk], pick_vectors[col : min(t, col + 1024)])
                    step = 2.0 - 2.0 * sims.astype(np.float64)
                    step[step < kcenter.DUPLICATE_SQ_DISTANCE] = 0.0
                    if chunk_seen[-1] > col:  # some rows have seen some of these picks already
                        step[np.arange(col, col + step.shape[1])[None, :] < chunk_seen[:, None]] = np.inf
                    np.minimum(best, step.min(axis=1), out=best)
                c2[chunk] = np.minimum(c2[chunk], best)
        applied[rows] = t
        cap[rows] = _capped(c2[rows])
        shut = c2[rows] <= 0.0
        if minimum_distance is not None:
            shut |= np.sqrt(np.maximum(c2[rows], 0.0)) < minimum_distance
        closed[rows] |= shut

    def freshen(rows: np.ndarray) -> None:
        """Rows up to date: their u_st exact, their g_st an upper bound from their neighbours' current values."""
        refresh(rows)
        u_st[rows] = np.where(closed[rows], -np.inf, objective.u(cap, rows))
        g_st[rows] = np.where(closed[rows], -np.inf, objective.g(cap, rows))

    def make_exact(rows: np.ndarray) -> None:
        """Rows' u_st and g_st exact at this step (with TYPICALITY, their neighbours brought up to date too)."""
        if nbrs is None:
            freshen(rows[applied[rows] < t])
            return
        rows = rows[g_exact_at[rows] < t]
        if len(rows):
            touched = np.unique(np.concatenate([rows, nbrs[rows].ravel()]))
            freshen(touched[applied[touched] < t])
            g_st[rows] = np.where(closed[rows], -np.inf, objective.g(cap, rows))
            g_exact_at[rows] = t

    def is_exact(rows: np.ndarray) -> np.ndarray:
        return (applied[rows] == t) & (g_exact_at[rows] == t) if nbrs is not None else applied[rows] == t

    def block(b: int) -> np.ndarray:
        return everything[b * size : (b + 1) * size]

    def exact_max(values: np.ndarray, tops: np.ndarray, exact: Callable[[np.ndarray], np.ndarray],
                  update: Callable[[np.ndarray], None]) -> float:
        """The largest current value over the pickable rows: bring the top rows up to date until the top
        one is (in batches that double, as after the first picks nearly every row's value has fallen)."""
        batch = 16
        while True:
            b = int(np.argmax(tops))
            if tops[b] == -np.inf:
                return -np.inf
            rows = block(b)
            inside = values[rows]
            top = float(inside.max())
            if top < tops[b]:  # the block's bound was stale
                tops[b] = top
                continue
            i = int(np.argmax(inside))
            if exact(rows[i : i + 1])[0]:
                return top
            few = min(batch, len(rows))
            update(rows[np.argpartition(-inside, few - 1)[:few]])
            batch = min(2 * batch, size)

    def take(i: int) -> None:
        nonlocal t
        picks.add(i, float(c2[i]))
        picked[i] = closed[i] = True
        u_st[i] = g_st[i] = -np.inf
        pick_vectors[t] = x[i]
        t += 1

    for i in preselected[:k]:
        if not picked[int(i)]:
            refresh(np.array([int(i)]))
            take(int(i))
    first = float("nan")
    reason = REQUESTED
    while len(picks) < k:
        best_u = exact_max(u_st, top_u, lambda rows: applied[rows] == t, lambda rows: freshen(rows))
        best_g = (exact_max(g_st, top_g, lambda rows: g_exact_at[rows] == t, make_exact)
                  if nbrs is not None else 0.0)
        if best_u == -np.inf:  # nothing pickable: say why (one pass over every row, once)
            refresh(everything)
            open_ = ~picked & (c2 > 0.0)
            limited = minimum_distance is not None or near_pool is not None
            reason = MINIMUM_DISTANCE if open_.any() and limited else COPIES
            if np.isnan(first):
                first = float(np.sqrt(c2[open_].max())) if open_.any() else 0.0
            break
        per_category = picks.per_category()
        category_tops = [(held * per_cat).max(axis=1) for held, per_cat in zip(present, per_category, strict=True)]
        bounds = objective.scores(top_u, top_g, best_u, best_g, top_bonus, category_tops)
        bounds[top_u == -np.inf] = -np.inf
        best_score, best = -np.inf, n
        for b in np.argsort(-bounds, kind="stable").tolist():
            if bounds[b] < best_score or bounds[b] == -np.inf:
                break
            rows = block(b)
            batch = 32
            while True:
                score = objective.scores(u_st[rows], g_st[rows], best_u, best_g, *objective.extras(rows, per_category))
                score[closed[rows] | (u_st[rows] < NOVELTY_FLOOR * best_u)] = -np.inf  # u_st >= u: exact if below
                exact = is_exact(rows) & ~closed[rows]
                if exact.any():
                    j = int(np.argmax(np.where(exact, score, -np.inf)))
                    if score[j] > best_score or (score[j] == best_score and rows[j] < best):
                        best_score, best = float(score[j]), int(rows[j])
                waiting = np.flatnonzero(~exact & ~closed[rows] & (score >= best_score))
                if not len(waiting):
                    break
                few = min(batch, len(waiting))
                make_exact(rows[waiting[np.argpartition(-score[waiting], few - 1)[:few]]])
                batch = min(2 * batch, size)
            top_u[b], top_g[b] = u_st[rows].max(), g_st[rows].max()
        if np.isnan(first):
            first = float(np.sqrt(c2[best]))
        take(best)
    return picks.outcome(pool_d, reason, first)
