"""Greedy k-center (farthest-point) selection on L2-normalised embeddings, seeded by the datapool.

Every candidate starts at its distance to the nearest datapool sample; each step picks the farthest
candidate and lowers the others' distances. Squared distances are used throughout
(|a-b|^2 = 2 - 2 a.b for unit vectors), which does not change any argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Exact seeding while candidates x pool stays below this many dot products; hnswlib above.
EXACT_SEEDING_MAX_PAIRS = 2_000_000_000
_BLOCK_BYTES = 64 * 1024 * 1024
# Rows per lazily updated block of the greedy loop: small enough to skip most of the candidates per
# pick, large enough that each update is an efficient matrix product.
_BLOCK_ROWS = 4096
_VERIFY_BATCH = 64
# Candidates considered for one verification batch: this many times the batch, by their (possibly stale)
# bound, brought up to date against every pick first, so a batch holds rows that can still be picked.
_VERIFY_POOL_FACTOR = 4
# Screened bf16 products (selection.screen) for verification passes over the pool and for block updates
# with at least this many pending picks. Fewer: the float32 product is memory-bound, and the screen's
# fixed costs made updates slower (N = M = 2e5, k = 2000, 2 loaded cores: 80 s screened at 32 vs 30 s).
SCREEN = True
SCREEN_MIN_PICKS = 256
_ROWS_CHUNK = 65536
# Squared distances below this are float32 rounding noise between (near-)identical unit vectors: the
# self-distance 2 - 2 a.a of a 512-d float32 unit vector is up to ~1e-6, not 0. They count as 0 (a
# duplicate), so a copy of a datapool sample never outranks a genuinely new one by rounding alone.
DUPLICATE_SQ_DISTANCE = 1e-5
# hnswlib settings, measured at N = M = 1e5, d = 512 on 2 cores (benchmarks/bench_selection.py): the
# index builds in ~25 s (once per pool sample when stored, see datapool.pool_index), and a query at ef 32
# finds the exact nearest pool sample for 99.5% of the candidates in ~8 s (ef 128: 1.0 in ~28 s; exact
# blocked products: ~70 s). Candidates that reach the top are verified exactly, so lower recall costs
# verification passes, not correctness: ef 16 and ef 32 gave the same whole-selection time.
HNSW_EF_CONSTRUCTION = 100
HNSW_M = 16
HNSW_EF = 32


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


def exact_nearest_sq_distance(
    candidates: np.ndarray, pool: np.ndarray, *, block_bytes: int | None = None
) -> np.ndarray:
    """Blocked matrix products: memory stays at one block of similarities, never N x M.

    One block of similarities at a time: `block_bytes`, by default at most 64 MiB and at most a quarter
    of the candidates' size (so peak memory stays a fraction of the candidate matrix).
    """
    n, m = len(candidates), len(pool)
    out = np.empty(n, dtype=np.float32)
    if block_bytes is None:
        block_bytes = min(_BLOCK_BYTES, max(1 << 20, candidates.nbytes // 4))
    rows = max(1, block_bytes // (4 * m))
    for start in range(0, n, rows):
        sims = candidates[start : start + rows] @ pool.T
        out[start : start + rows] = 2.0 - 2.0 * sims.max(axis=1)
    return _snap_duplicates(out)


def _snap_duplicates(d2: np.ndarray) -> np.ndarray:
    """Squared distances with rounding noise around 0 set to exactly 0 (in place)."""
    d2[d2 < DUPLICATE_SQ_DISTANCE] = 0.0
    return d2


def new_hnsw_index(dim: int, capacity: int) -> Any:
    """An empty inner-product hnswlib index with the HNSW_* settings."""
    import hnswlib

    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=max(capacity, 1), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=0)
    return index


def build_hnsw_index(vectors: np.ndarray, *, threads: int = -1) -> Any:
    """An hnswlib index over `vectors`, labels = row numbers."""
    index = new_hnsw_index(vectors.shape[1], len(vectors))
    index.add_items(np.ascontiguousarray(vectors, np.float32), np.arange(len(vectors)), num_threads=threads)
    return index


def hnsw_nearest_sq_distance(
    candidates: np.ndarray,
    pool: np.ndarray | None,
    *,
    ef: int = HNSW_EF,
    threads: int = -1,
    index: Any = None,
) -> np.ndarray:
    """Approximate nearest pool sample with an hnswlib index over the pool: an upper bound on the
    exact squared distance (it is the distance to a real pool sample).

    `index`: a prebuilt index over `pool` whose labels are its row numbers (datapool.pool_index);
    otherwise one is built here with the same settings (HNSW_*). `pool` may be None when `index` is
    given: the pool's vectors are then read from the index (hnswlib keeps them, exactly, for "ip").
    """
    if index is None:
        assert pool is not None
        index = build_hnsw_index(pool, threads=threads)
    rows = pool_rows(pool, index)
    index.set_ef(ef)
    labels, _ = index.knn_query(candidates, k=1, num_threads=threads)
    sims = np.empty(len(candidates), np.float32)
    for start in range(0, len(candidates), _ROWS_CHUNK):
        stop = start + _ROWS_CHUNK
        sims[start:stop] = np.einsum("ij,ij->i", candidates[start:stop], rows(labels[start:stop, 0]))
    return _snap_duplicates((2.0 - 2.0 * sims).astype(np.float32))


def pool_rows(pool: np.ndarray | None, index: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Exact float32 pool rows by row number: from the matrix, or copied out of the hnswlib index."""
    if pool is not None:
        return lambda idx: pool[np.asarray(idx, np.int64)]
    return lambda idx: np.asarray(index.get_items(np.asarray(idx, np.uint64)), np.float32).reshape(-1, index.dim)


class _PoolVerifier:
    """Exact squared distance from a few candidates to their nearest pool sample, one pass over the pool.

    Screened (SCREEN): one bf16 product against a bf16 copy of the pool (half its bytes, ~2.5x the
    float32 speed with AVX512_BF16) proves which few pool rows can be each candidate's nearest; those are
    computed in float32 from the exact rows (selection.screen). Otherwise: blocked float32 products.
    """

    def __init__(self, pool: np.ndarray | None, index: Any, dim: int) -> None:
        self.pool = pool
        self.rows = pool_rows(pool, index)
        size = len(pool) if pool is not None else int(index.get_current_count())
        self.low = None
        if SCREEN or pool is None:
            from datapool_pipeline.selection.screen import LowRows

            self.low = LowRows(size, dim, lambda a, b: self.rows(np.arange(a, b)))

    def nearest_sq(self, x: np.ndarray, upper_sq: np.ndarray) -> np.ndarray:
        if self.low is None:
            assert self.pool is not None
            return exact_nearest_sq_distance(x, self.pool, block_bytes=4 * len(x) * len(self.pool))
        from datapool_pipeline.selection.screen import max_sim_rows

        shift = (1.0 - np.minimum(upper_sq, 4.0) / 2.0).astype(np.float32)  # similarity of the hnswlib neighbour
        b, j = self.low.near_max(x, shift)
        sims = max_sim_rows(x, b, j, self.rows)
        return _snap_duplicates((2.0 - 2.0 * sims).astype(np.float32))


def greedy_k_center(
    candidates: np.ndarray,
    k: int,
    *,
    pool: np.ndarray | None = None,
    pool_sq_distances: np.ndarray | None = None,
    preselected: Sequence[int] = (),
    seed: int = 0,
    block_rows: int = _BLOCK_ROWS,
    exact_max_pairs: int = EXACT_SEEDING_MAX_PAIRS,
    pool_index: Any = None,
    stop_at_duplicates: bool = True,
) -> KCenterResult:
    """Pick k candidates, each the farthest from the datapool and the earlier picks.

    With `stop_at_duplicates`, the selection stops early (fewer than k picks) once the farthest
    candidate is at distance 0: every remaining candidate is a copy of a datapool sample or of a pick.

    With an empty pool and nothing preselected, the first pick is drawn with `seed`. Ties go to
    the lowest candidate index. `preselected` picks (e.g. adopted uploads) count towards k.

    Same picks as the plain loop (update every candidate after every pick), computed lazily:
    candidates live in row blocks that remember how many picks they have seen; a block is brought
    up to date (one matrix product against all its pending picks) only when its largest remaining
    distance, an upper bound, is the largest of all blocks. The argmax of an up-to-date block whose
    maximum tops every other block's upper bound is the exact greedy pick.

    Given `pool` (not `pool_sq_distances`) and more than `exact_max_pairs` candidate x pool pairs,
    the pool distances start as hnswlib upper bounds and are made exact only for the candidates that
    reach the top; the picks stay exact and `pool_distances` is exact for the picks (an upper bound
    for the others). `pool_index`, a prebuilt hnswlib index over `pool` (labels = row numbers), is
    queried instead of building one; with `pool_index` and `pool=None` the pool is the index's vectors
    (always the hnswlib path), so the caller need not keep a second copy of the pool in memory.
    """
    candidates = _as_unit_float32(candidates)
    n = len(candidates)
    k = min(k, n)
    verify_pool: _PoolVerifier | None = None
    if pool_sq_distances is None:
        dim = candidates.shape[1] if candidates.ndim == 2 else 0
        if pool is None and pool_index is not None and pool_index.get_current_count():
            # The pool's vectors live in the index: not held twice (at 1e6 x 512 each copy is 2 GB).
            pool_sq_distances = hnsw_nearest_sq_distance(candidates, None, index=pool_index)
            verify_pool = _PoolVerifier(None, pool_index, dim)
        else:
            pool = _as_unit_float32(pool) if pool is not None else np.empty((0, dim), np.float32)
            if len(pool) and n * len(pool) > exact_max_pairs:
                # hnswlib gives upper bounds (a real pool sample, maybe not the nearest); each candidate
                # that reaches the top gets its exact distance before it can be picked: exact picks.
                pool_sq_distances = hnsw_nearest_sq_distance(candidates, pool, index=pool_index)
                verify_pool = _PoolVerifier(pool, pool_index, dim)
            else:
                pool_sq_distances = nearest_pool_distance(candidates, pool, exact_max_pairs=exact_max_pairs)
    state = _LazyDistances(candidates, pool_sq_distances, k, block_rows, verify_pool)
    for i in preselected[:k]:
        if not state.picked[int(i)]:
            state.take(int(i))
    if k > 0 and not state.picks and not np.isfinite(state.d2).any():
        state.take(int(np.random.default_rng(seed).integers(n)))
    while len(state.picks) < k:
        best = state.argmax()
        if stop_at_duplicates and state.d2[best] <= 0.0:
            break  # only copies left: adding them adds nothing
        state.take(best)
    pool_d = np.sqrt(np.maximum(state.pool_sq, 0.0))
    return KCenterResult(
        picks=state.picks,
        pick_distances=np.sqrt(np.maximum(np.array(state.pick_d2, np.float64), 0.0)),
        pool_distances=pool_d,
    )


def _roundings(x: np.ndarray, chunk: int = _ROWS_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """selection.screen.rounding's per-row bf16 error and norm for every row, in chunks."""
    from datapool_pipeline.selection.screen import rounding

    err, norm = np.empty(len(x)), np.empty(len(x))
    for start in range(0, len(x), chunk):
        e, nrm, _ = rounding(x[start : start + chunk])
        err[start : start + chunk], norm[start : start + chunk] = e, nrm
    return err, norm


class _LazyDistances:
    """Squared distances to the nearest datapool-or-picked sample, updated block by block on demand."""

    def __init__(
        self,
        candidates: np.ndarray,
        pool_sq: np.ndarray,
        k: int,
        block_rows: int,
        verify_pool: np.ndarray | _PoolVerifier | None,
    ) -> None:
        self.x = candidates
        n = len(candidates)
        dim = candidates.shape[1] if candidates.ndim == 2 else 0
        self.d2 = np.asarray(pool_sq, dtype=np.float32).copy()
        self.pool_sq = np.asarray(pool_sq, dtype=np.float32).copy()
        if isinstance(verify_pool, np.ndarray):
            verify_pool = _PoolVerifier(_as_unit_float32(verify_pool), None, dim)
        self.pool = verify_pool
        self.pool_exact = np.full(n, verify_pool is None, dtype=bool)
        self.picked = np.zeros(n, dtype=bool)
        self.picks: list[int] = []
        self.pick_d2: list[float] = []
        self.pick_vectors = np.empty((max(k, 1), dim), np.float32)
        self.pick_low = None
        if SCREEN and k >= SCREEN_MIN_PICKS and block_rows >= SCREEN_MIN_PICKS:
            from datapool_pipeline.selection.screen import LowRows

            self.pick_low = LowRows(max(k, 1), dim)
            self.x_err, self.x_norm = _roundings(candidates)
        self.rows = max(1, block_rows)
        self.starts = np.arange(0, n, self.rows)
        self.seen = np.zeros(len(self.starts), dtype=np.int64)  # picks applied to each block
        self.block_max = np.array([self._max(b) for b in range(len(self.starts))], dtype=np.float32)
        self.stats = {"refreshes": 0, "screened_refreshes": 0, "verify_passes": 0, "verified_rows": 0}

    def _span(self, b: int) -> slice:
        return slice(int(self.starts[b]), int(self.starts[b]) + self.rows)

    def _max(self, b: int) -> float:
        block = self.d2[self._span(b)]
        return float(block.max()) if len(block) else -np.inf

    def _refresh(self, b: int) -> None:
        done, total = int(self.seen[b]), len(self.picks)
        if done < total:
            span = self._span(b)
            self.stats["refreshes"] += 1
            d2 = self.d2[span]
            if self.pick_low is not None and total - done >= SCREEN_MIN_PICKS and not np.isposinf(d2).any():
                self.stats["screened_refreshes"] += 1
                nearest = self._screened_nearest(span.start, self.x[span], d2, done, total)
            else:
                sims = self.x[span] @ self.pick_vectors[done:total].T
                nearest = _snap_duplicates(2.0 - 2.0 * sims.max(axis=1))
            np.minimum(d2, nearest, out=d2)
            self.seen[b] = total
        self.block_max[b] = self._max(b)

    def _screened_nearest(self, start: int, x: np.ndarray, d2: np.ndarray, done: int, total: int) -> np.ndarray:
        """Squared distance to the nearest of picks done..total, exact (float32) wherever it is below
        the row's current d2 (the only place it changes anything); +inf elsewhere."""
        from datapool_pipeline.selection.screen import fp32_slack, max_sim_rows

        assert self.pick_low is not None
        threshold = np.where(np.isfinite(d2), 1.0 - d2.astype(np.float64) / 2.0, 3.0)  # 3: picked, none
        span = slice(start, start + len(x))
        b, j = self.pick_low.above(x, threshold, fp32_slack(x.shape[1]), done, total,
                                   self.x_err[span], self.x_norm[span])
        sims = max_sim_rows(x, b, j, lambda idx: self.pick_vectors[idx])
        return _snap_duplicates((2.0 - 2.0 * sims).astype(np.float32))

    def _verify(self, rows: np.ndarray) -> None:
        """Exact pool distances for these candidates (only those not yet exact)."""
        rows = rows[~self.pool_exact[rows]]
        if len(rows) == 0 or self.pool is None:
            return
        # A few rows: one pass over the pool for all of them (the pool read, not the arithmetic, is the
        # cost), instead of the memory-saving row blocks meant for the whole candidate matrix.
        self.stats["verify_passes"] += 1
        self.stats["verified_rows"] += len(rows)
        exact = self.pool.nearest_sq(self.x[rows], self.pool_sq[rows])
        self.pool_sq[rows] = exact
        self.pool_exact[rows] = True
        self.d2[rows] = np.minimum(self.d2[rows], exact)

    def _to_date(self, i: int) -> float:
        """Candidate i's exact current distance (its block brought up to date)."""
        b = i // self.rows
        self._refresh(b)
        if not self.pool_exact[i]:
            self._verify(np.array([i]))
            self.block_max[b] = self._max(b)
        return float(self.d2[i])

    def take(self, i: int) -> None:
        self.pick_d2.append(self._to_date(i))
        self.pick_vectors[len(self.picks)] = self.x[i]
        if self.pick_low is not None:
            self.pick_low.set_rows(len(self.picks), self.x[i])
        self.picks.append(i)
        self.picked[i] = True
        self.d2[i] = -np.inf
        self.block_max[i // self.rows] = self._max(i // self.rows)

    def argmax(self) -> int:
        while True:
            b = int(np.argmax(self.block_max))  # lowest block on ties, so lowest index wins
            if self.seen[b] == len(self.picks):
                i = int(self.starts[b]) + int(np.argmax(self.d2[self._span(b)]))
                if self.pool_exact[i]:
                    return i
                self._verify_top(i)
                continue
            self._refresh(b)

    def _verify_top(self, i: int) -> None:
        """Exact pool distances for i and the unverified candidates most likely to be picked next, in
        one pass over the pool (one pass costs about the same for 1 row as for 64).

        The batch is chosen by up-to-date bounds: the rows with the largest stored bounds are first
        brought up to date against every pick (cheap next to a pass over the pool), so rows already
        covered by a pick do not take a place in the batch (most of those would never be picked)."""
        open_rows = np.flatnonzero(~self.pool_exact & np.isfinite(self.d2))
        want = _VERIFY_BATCH * _VERIFY_POOL_FACTOR
        if len(open_rows) > want:
            open_rows = open_rows[np.argpartition(-self.d2[open_rows], want - 1)[:want]]
        if len(open_rows) and self.picks:
            sims = self.x[open_rows] @ self.pick_vectors[: len(self.picks)].T
            nearest = _snap_duplicates(2.0 - 2.0 * sims.max(axis=1))
            self.d2[open_rows] = np.minimum(self.d2[open_rows], nearest)
        if len(open_rows) > _VERIFY_BATCH:
            open_rows = open_rows[np.argsort(-self.d2[open_rows], kind="stable")[:_VERIFY_BATCH]]
        self._verify(np.union1d(open_rows, [i]))  # i itself always, so every pass makes progress
        self.block_max = np.maximum.reduceat(self.d2, self.starts).astype(np.float32)
