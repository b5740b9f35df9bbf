"""Greedy k-center (farthest-point) selection on L2-normalised embeddings, seeded by the datapool.

Every candidate starts at its distance to the nearest datapool sample; each step picks the farthest
candidate and lowers the others' distances. Squared distances are used throughout (no argmax changes).

Which distance: |a - b|^2 of the float32 vectors as given, evaluated in float64 (`exact_sq`: the same
number, to ~1e-15, as a float64 reference computes), with values below DUPLICATE_SQ_DISTANCE counting
as 0. Fast products (float32 BLAS; int8 and bf16 screens, selection.screen) only decide which pairs can
matter, with proven error bounds; every distance the selector stores or compares is such a float64 value. So
near-ties resolve as in the exact reference (float32 rounding alone, ~1e-7, swapped candidates whose
distances differed by 8e-8 at N = 1e5), and exact ties go to the lowest index.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datapool_pipeline.selection.screen import U32, Int8Rows, LowRows, gamma, rounding

# Exact seeding while candidates x pool stays below this many dot products; hnswlib above.
EXACT_SEEDING_MAX_PAIRS = 2_000_000_000
_BLOCK_BYTES = 64 * 1024 * 1024
# Rows per lazily updated block of the greedy loop (rows sorted by their starting distance): small enough
# that the block holding the next pick is cheap to bring up to date after every pick, large enough that
# each update is an efficient matrix product (N = M = 1e5, k = 1000: 512-1024 rows best, 4096 ~2x the
# update time).
_BLOCK_ROWS = 1024
_VERIFY_BATCH = 64
# Candidates considered for one verification batch: this many times the batch, by their (possibly stale)
# bound, brought up to date against every pick first, so a batch holds rows that can still be picked.
_VERIFY_POOL_FACTOR = 4
# Screened products (selection.screen): int8 for verification passes over the pool, bf16 for block updates
# with at least SCREEN_MIN_PICKS pending picks. Fewer: the float32 product is memory-bound, and the screen's
# fixed costs made updates slower (N = M = 2e5, k = 2000, 2 loaded cores: 80 s screened at 32 vs 30 s).
SCREEN = True
SCREEN_MIN_PICKS = 256
_ROWS_CHUNK = 65536
_PAIRS_CHUNK = 4096
# Squared distances below this count as 0 (a duplicate): a copy of a datapool sample, re-encoded or
# renormalised, is ~1e-7 away, and must never outrank a genuinely new sample by rounding alone.
DUPLICATE_SQ_DISTANCE = 1e-5
# hnswlib settings, measured at N = M = 1e5, d = 512 on 2 cores (benchmarks/bench_selection.py): the
# index builds in ~25 s (once per pool sample when stored, see datapool.pool_index), and a query at ef 32
# finds the exact nearest pool sample for 99.5% of the candidates in ~8 s (ef 128: 1.0 in ~28 s; exact
# blocked products: ~70 s). Candidates that reach the top are verified exactly, so lower recall costs
# queries and verification passes, not correctness.
HNSW_EF_CONSTRUCTION = 100
HNSW_M = 16
HNSW_EF = 32
# Every candidate is first queried at HNSW_EF_FIRST (a cheaper, looser bound); those that come near the top
# are queried again at each ef of HNSW_REFINE_EF in turn (_REFINE_BATCH at a time), and verified exactly
# only after the last. A level of ef e is used for pools of at least e * _REFINE_MIN_POOL_PER_EF samples
# (HNSW_EF always): below, an exact verification costs about as much as that query. Measured on the
# benchmark's clustered data (bench_selection.py): at N = M = 1e6 the exact nearest pool sample is found
# for 49% of candidates at ef 8, 79% at ef 32, 98.2% at ef 128 (99.5% at ef 32 for 1e5), and a
# candidate whose search ends in another cluster has a bound of ~1.4-1.8, far above the true ~0.4-0.53:
# each of those has to be resolved before the first pick, by a query (~0.1-2 ms) rather than by an exact
# pass over the pool (~5 ms at 1e6). A candidate goes on to the next ef unless two refinements agree on a
# bound no larger than an exact distance seen already (then an exact verification decides).
HNSW_EF_FIRST = 8
HNSW_REFINE_EF = (HNSW_EF, 128, 512)
_REFINE_MIN_POOL_PER_EF = 2000
_REFINE_BATCH = 1024
_X_CACHE_BYTES = 16 * 1024 * 1024
_TRIM_EVERY = 128  # picks (and verification passes) between two _return_free_memory()


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


Rows = Callable[[np.ndarray], np.ndarray]


def squared_norm_range(x: np.ndarray, chunk: int = _ROWS_CHUNK) -> tuple[float, float]:
    """Bounds lo <= |row|^2 <= hi over the rows of x (float32 sums, widened by their error bound)."""
    if len(x) == 0:
        return 1.0, 1.0
    lo, hi = np.inf, -np.inf
    for start in range(0, len(x), chunk):
        sq = np.einsum("ij,ij->i", x[start : start + chunk], x[start : start + chunk])
        lo, hi = min(lo, float(sq.min())), max(hi, float(sq.max()))
    err = gamma(x.shape[1]) * hi + 2 * U32 * hi
    return max(0.0, lo - err), hi + err


def float32_sq_error(dim: int, lo: float, hi: float) -> float:
    """Largest |(2 - 2 fl32(a.b)) - |a - b|^2| for float32 rows a, b with lo <= |row|^2 <= hi.

    |a|^2 + |b|^2 - 2 is within max(2 hi - 2, 2 - 2 lo); a float32 dot product of `dim` terms, in any
    order, with or without FMA, is within gamma_dim |a| |b| <= gamma_dim hi of the exact one."""
    return 2.0 * gamma(dim) * hi + max(2.0 * hi - 2.0, 2.0 - 2.0 * lo, 0.0) + 1e-12


def _f32_floor(v: np.ndarray) -> np.ndarray:
    """float32 values <= v (for thresholds that float32 products are compared against)."""
    return np.nextafter(np.asarray(v, np.float64).astype(np.float32), np.float32(-np.inf))


def exact_sq(x: np.ndarray, xi: np.ndarray, rows: Rows | np.ndarray, yj: np.ndarray) -> np.ndarray:
    """|x[xi] - y[yj]|^2 per pair, in float64 from the float32 rows, snapped (DUPLICATE_SQ_DISTANCE).

    `rows`: the y matrix, or a function returning its float32 rows by row number (hnswlib-held pool)."""
    out = np.empty(len(xi), np.float64)
    for start in range(0, len(xi), _PAIRS_CHUNK):
        stop = start + _PAIRS_CHUNK
        a = x[xi[start:stop]].astype(np.float64)
        a -= rows[yj[start:stop]] if isinstance(rows, np.ndarray) else rows(yj[start:stop])
        out[start:stop] = np.einsum("ij,ij->i", a, a)
    return _snap_duplicates(out)


def small_product(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x @ y.T in float32 on one thread (torch/MKL). The greedy loop's products are small (a block of rows
    against a few new picks); two BLAS threads made them 3-20x slower on 2 cores shared with other jobs
    (thread hand-offs), and the loop runs thousands of them."""
    import torch

    if torch.get_float32_matmul_precision() != "highest":  # may compute in bf16: outside float32_sq_error
        return x @ y.T
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.mm(torch.from_numpy(x), torch.from_numpy(y).T).numpy()
    finally:
        torch.set_num_threads(threads)


def _return_free_memory() -> None:
    """glibc's malloc_trim: heap memory freed by the loop's many mid-size temporaries (a few MB, torch and
    numpy, on several threads) otherwise stays with the process. At N = M = 1e6, k = 1e4 the resident size
    grew by 1.2 GB over the 10,000 picks without it (no leak: the same memory comes back with a trim)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None on another C library."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _row_min(n: int, b: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, b, values)
    return out


def nearest_pool_distance(
    candidates: np.ndarray, pool: np.ndarray, *, exact_max_pairs: int = EXACT_SEEDING_MAX_PAIRS
) -> np.ndarray:
    """Squared distance from each candidate to its nearest pool sample (inf if the pool is empty)."""
    candidates = _as_unit_float32(candidates)
    pool = _as_unit_float32(pool)
    n, m = len(candidates), len(pool)
    if m == 0:
        return np.full(n, np.inf)
    if n * m <= exact_max_pairs:
        return exact_nearest_sq_distance(candidates, pool)
    return hnsw_nearest_sq_distance(candidates, pool)


def exact_nearest_sq_distance(
    candidates: np.ndarray, pool: np.ndarray, *, block_bytes: int | None = None, sq_error: float | None = None
) -> np.ndarray:
    """Exact (float64, `exact_sq`) squared distance to the nearest pool row, by blocked float32 products:
    memory stays at one block of similarities, never N x M.

    The float32 product of a row block decides which pool rows can be a row's nearest (within twice
    `sq_error`, float32_sq_error, of the best float32 value); only those pairs are evaluated in float64.
    One block of similarities at a time: `block_bytes`, by default at most 64 MiB and at most a quarter
    of the candidates' size (so peak memory stays a fraction of the candidate matrix).
    """
    candidates, pool = _as_unit_float32(candidates), _as_unit_float32(pool)
    n, m = len(candidates), len(pool)
    out = np.empty(n, dtype=np.float64)
    if m == 0:
        out[:] = np.inf
        return out
    if sq_error is None:
        (lo_c, hi_c), (lo_p, hi_p) = squared_norm_range(candidates), squared_norm_range(pool)
        sq_error = float32_sq_error(candidates.shape[1], min(lo_c, lo_p), max(hi_c, hi_p))
    if block_bytes is None:
        block_bytes = min(_BLOCK_BYTES, max(1 << 20, candidates.nbytes // 4))
    rows = max(1, block_bytes // (4 * m))
    for start in range(0, n, rows):
        x = candidates[start : start + rows]
        sims = x @ pool.T
        # a pool row whose float32 distance is more than 2 sq_error above the row's best is not nearest
        need = _f32_floor(sims.max(axis=1).astype(np.float64) - sq_error)
        b, j = np.nonzero(sims >= need[:, None])
        out[start : start + rows] = _row_min(len(x), b, exact_sq(x, b, pool, j))
    return out


def _snap_duplicates(d2: np.ndarray) -> np.ndarray:
    """Squared distances below DUPLICATE_SQ_DISTANCE set to exactly 0 (in place)."""
    d2[d2 < DUPLICATE_SQ_DISTANCE] = 0.0
    return d2


def new_hnsw_index(dim: int, capacity: int, *, cls: type | None = None) -> Any:
    """An empty inner-product hnswlib index with the HNSW_* settings (`cls`: hnswlib.Index or a subclass)."""
    import hnswlib

    index = (cls or hnswlib.Index)(space="ip", dim=dim)
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
    exact squared distance (it is the `exact_sq` distance to a real pool sample).

    `index`: a prebuilt index over `pool` whose labels are its row numbers (datapool.pool_index);
    otherwise one is built here with the same settings (HNSW_*). `pool` may be None when `index` is
    given: the pool's vectors are then read from the index (hnswlib keeps them, exactly, for "ip").
    """
    candidates = _as_unit_float32(candidates)
    if index is None:
        assert pool is not None
        index = build_hnsw_index(pool, threads=threads)
    rows = pool_rows(pool, index)
    index.set_ef(ef)
    labels, _ = index.knn_query(candidates, k=1, num_threads=threads)
    out = np.empty(len(candidates), np.float64)
    for start in range(0, len(candidates), _ROWS_CHUNK):
        stop = min(start + _ROWS_CHUNK, len(candidates))
        out[start:stop] = exact_sq(candidates[start:stop], np.arange(stop - start), rows,
                                   labels[start:stop, 0].astype(np.int64))
    return out


def pool_rows(pool: np.ndarray | None, index: Any) -> Rows:
    """Exact float32 pool rows by row number: from the matrix, or from the hnswlib index (its `vectors`,
    datapool.pool_index.IndexVectors, when it has them: hnswlib's get_items takes ~85 us a row)."""
    if pool is not None:
        return lambda idx: pool[np.asarray(idx, np.int64)]
    vectors = getattr(index, "vectors", None)
    if vectors is not None:
        return vectors.rows
    return lambda idx: np.asarray(index.get_items(np.asarray(idx, np.uint64)), np.float32).reshape(-1, index.dim)


class _PoolVerifier:
    """Exact squared distance from a few candidates to their nearest pool sample, one pass over the pool.

    Screened (SCREEN): one int8 product against an int8 copy of the pool (selection.screen.Int8Rows: a
    quarter of its bytes, exact int32 accumulation, about a bf16 product's speed) proves which few
    pool rows can be each candidate's nearest; those are evaluated in float64 from the exact rows
    (`exact_sq`). Otherwise: blocked float32 products, likewise checked in float64
    (exact_nearest_sq_distance).
    """

    def __init__(self, pool: np.ndarray | None, index: Any, dim: int, candidates_norms: tuple[float, float]) -> None:
        self.pool = pool
        self.pairs = 0  # pool rows evaluated exactly
        self.rows = pool_rows(pool, index)
        size = len(pool) if pool is not None else int(index.get_current_count())
        self.low: Any = None
        if SCREEN or pool is None:
            self.low = Int8Rows(size, dim, lambda a, b: self.rows(np.arange(a, b)))
            lo, hi = self.low.sq_norm_range
        else:
            lo, hi = squared_norm_range(pool)
        self.pool_sq_lo = lo
        # the nearest row by |x - t|^2 has x.t within (hi - lo) / 2 of the largest x.t
        self.margin = (hi - lo) / 2.0 + 1e-12
        self.sq_error = float32_sq_error(dim, min(lo, candidates_norms[0]), max(hi, candidates_norms[1]))

    def nearest_sq(self, x: np.ndarray, upper_sq: np.ndarray) -> np.ndarray:
        if self.low is None:
            assert self.pool is not None
            return exact_nearest_sq_distance(x, self.pool, block_bytes=4 * len(x) * len(self.pool),
                                             sq_error=self.sq_error)
        # a pool row t at most upper_sq away has x.t >= (|x|^2 + |t|^2 - upper_sq) / 2
        x64 = x.astype(np.float64)
        threshold = (np.einsum("ij,ij->i", x64, x64) + self.pool_sq_lo - upper_sq) / 2.0
        b, j = self.low.at_least(x, threshold - 1e-12, margin=self.margin)
        self.pairs += len(b)
        # the screen keeps the nearest row, which is at most upper_sq (the distance to a real pool row) away
        return _row_min(len(x), b, exact_sq(x, b, self.rows, j))


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

    Same picks as the plain loop (update every candidate after every pick) in float64, computed lazily:
    candidates live in row blocks (rows sorted by their starting distance) that remember how many picks
    they have seen; a block is brought up to date (one matrix product against all its pending picks)
    only when its largest remaining distance, an upper bound, is the largest of all blocks. The largest
    distance of an up-to-date block that tops every other block's upper bound is the exact greedy pick.

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
    dim = candidates.shape[1] if candidates.ndim == 2 else 0
    norms = squared_norm_range(candidates) if candidates.ndim == 2 else (1.0, 1.0)
    verify_pool: _PoolVerifier | None = None
    refine: _HnswRefiner | None = None
    if pool_sq_distances is None:
        if pool is None and pool_index is not None and pool_index.get_current_count():
            # The pool's vectors live in the index: not held twice (at 1e6 x 512 each copy is 2 GB).
            pool_sq_distances, refine = _hnsw_seed(candidates, None, pool_index)
            verify_pool = _PoolVerifier(None, pool_index, dim, norms)
        else:
            pool = _as_unit_float32(pool) if pool is not None else np.empty((0, dim), np.float32)
            if len(pool) and n * len(pool) > exact_max_pairs:
                # hnswlib gives upper bounds (a real pool sample, maybe not the nearest); each candidate
                # that reaches the top gets its exact distance before it can be picked: exact picks.
                index = pool_index if pool_index is not None else build_hnsw_index(pool)
                pool_sq_distances, refine = _hnsw_seed(candidates, pool, index)
                verify_pool = _PoolVerifier(pool, index, dim, norms)
            else:
                pool_sq_distances = nearest_pool_distance(candidates, pool, exact_max_pairs=exact_max_pairs)
    state = _LazyDistances(candidates, pool_sq_distances, k, block_rows, verify_pool, norms=norms, refine=refine)
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


class _HnswRefiner:
    """Tighter hnswlib upper bounds for the candidates that come near the top: level i queries at ef
    levels[i] (after a cheap first query of every candidate at HNSW_EF_FIRST)."""

    def __init__(self, candidates: np.ndarray, pool: np.ndarray | None, index: Any, levels: list[int]) -> None:
        self.x, self.index, self.rows, self.levels = candidates, index, pool_rows(pool, index), levels

    def __call__(self, rows: np.ndarray, level: int) -> np.ndarray:
        self.index.set_ef(self.levels[level])
        labels, _ = self.index.knn_query(self.x[rows], k=1, num_threads=-1)
        return exact_sq(self.x, rows, self.rows, labels[:, 0].astype(np.int64))


def _hnsw_seed(candidates: np.ndarray, pool: np.ndarray | None, index: Any) -> tuple[np.ndarray, _HnswRefiner | None]:
    size = int(index.get_current_count())
    levels = [ef for ef in HNSW_REFINE_EF
              if ef > HNSW_EF_FIRST and (ef == HNSW_EF or ef * _REFINE_MIN_POOL_PER_EF <= size)]
    bounds = hnsw_nearest_sq_distance(candidates, pool, index=index, ef=HNSW_EF_FIRST)
    return bounds, (_HnswRefiner(candidates, pool, index, levels) if levels else None)


class _LazyDistances:
    """Squared distances to the nearest datapool-or-picked sample, updated block by block on demand.

    Every stored distance is an `exact_sq` value to a real pool sample or pick, so each is an upper bound
    on the row's current distance, and exact once the row's block has seen every pick and its pool
    distance is verified. Blocks hold the rows sorted by their starting distance (largest first): the
    rows that can still be picked share a few blocks, and blocks far below the final pick distance are
    never updated (unsorted, every block holds some of the top rows and sees nearly every pick)."""

    def __init__(
        self,
        candidates: np.ndarray,
        pool_sq: np.ndarray,
        k: int,
        block_rows: int,
        verify_pool: np.ndarray | _PoolVerifier | None,
        norms: tuple[float, float] | None = None,
        refine: _HnswRefiner | None = None,
    ) -> None:
        self.x = candidates
        n = len(candidates)
        self.dim = dim = candidates.shape[1] if candidates.ndim == 2 else 0
        self.norms = norms if norms is not None else (
            squared_norm_range(candidates) if candidates.ndim == 2 else (1.0, 1.0))
        self.sq_error = float32_sq_error(max(dim, 1), *self.norms)
        self.d2 = np.array(pool_sq, dtype=np.float64)
        self.pool_sq = self.d2.copy()
        if isinstance(verify_pool, np.ndarray):
            verify_pool = _PoolVerifier(_as_unit_float32(verify_pool), None, dim, self.norms)
        self.pool = verify_pool
        self.pool_exact = np.full(n, verify_pool is None, dtype=bool)
        self.refine = refine
        self.top_level = len(refine.levels) if refine is not None else 0
        self.level = np.zeros(n, np.int8)  # hnswlib queries done after the first; top_level: all of them
        self.exact_max = -np.inf  # the largest verified (exact) pool distance so far
        self.picked = np.zeros(n, dtype=bool)
        self.picks: list[int] = []
        self.pick_d2: list[float] = []
        self.pick_vectors = np.empty((max(k, 1), dim), np.float32)
        self.screen = SCREEN and k >= SCREEN_MIN_PICKS and block_rows >= SCREEN_MIN_PICKS
        self.pick_low: Any = None  # bf16 copy of the picks, built on the first screened update
        self.low_filled = 0
        self.x_err: np.ndarray | None = None  # per-row bf16 rounding of the candidates, filled per block
        self.x_norm: np.ndarray | None = None
        self.k = k
        self.rows = max(1, block_rows)
        self.order = np.argsort(-self.d2, kind="stable")
        self.starts = np.arange(0, n, self.rows)
        self.block_of = np.empty(n, np.int64)
        self.block_of[self.order] = np.arange(n) // self.rows
        self.seen = np.zeros(len(self.starts), dtype=np.int64)  # picks applied to each block
        self.block_max = np.maximum.reduceat(self.d2[self.order], self.starts) if n else np.empty(0)
        self._x_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._x_cache_blocks = max(1, min(_X_CACHE_BYTES, candidates.nbytes // 8) // max(1, self.rows * dim * 4))
        self.stats = {"refreshes": 0, "refreshed_rows": 0, "screened_refreshes": 0, "verify_passes": 0,
                      "verified_rows": 0, "loose_bounds": 0, "refine_passes": 0, "refined_rows": 0, "exact_pairs": 0}

    def _members(self, b: int) -> np.ndarray:
        start = int(self.starts[b])
        return self.order[start : start + self.rows]

    def _block_x(self, b: int, members: np.ndarray) -> np.ndarray:
        """The block's candidate rows (a gathered copy; the few hot blocks are kept)."""
        x = self._x_cache.get(b)
        if x is None:
            x = self.x[members]
            self._x_cache[b] = x
            if len(self._x_cache) > self._x_cache_blocks:
                self._x_cache.popitem(last=False)
        else:
            self._x_cache.move_to_end(b)
        return x

    def _update_max(self, blocks: np.ndarray) -> None:
        for b in np.unique(blocks):
            self.block_max[b] = self.d2[self._members(int(b))].max()

    def _refresh(self, b: int) -> None:
        done, total = int(self.seen[b]), len(self.picks)
        members = self._members(b)
        d2 = self.d2[members]
        if done < total:
            self.stats["refreshes"] += 1
            self.stats["refreshed_rows"] += len(members)
            x = self._block_x(b, members)
            if self.screen and total - done >= SCREEN_MIN_PICKS and not np.isposinf(d2).any():
                self.stats["screened_refreshes"] += 1
                self._lower_screened(x, members, d2, done, total)
            else:
                self._lower(x, d2, done, total)
            self.d2[members] = d2
            self.seen[b] = total
        self.block_max[b] = d2.max()

    def _lower(self, x: np.ndarray, d2: np.ndarray, done: int, total: int) -> None:
        """d2 (in place) lowered to the exact distance to picks done..total where that is smaller.

        float32 products bound every pair's distance within sq_error; a pair is evaluated exactly only
        if it can be below the row's d2 and can be the nearest of these picks."""
        picks = self.pick_vectors[done:total]
        sims = small_product(x, picks)
        smax = sims.max(axis=1).astype(np.float64)
        # 2 - 2 s <= d2 + e  and  2 - 2 s <= 2 - 2 smax + 2 e
        need = _f32_floor(np.maximum((2.0 - d2 - self.sq_error) / 2.0, smax - self.sq_error))
        b, j = np.nonzero(sims >= need[:, None])
        if len(b):
            self.stats["exact_pairs"] += len(b)
            np.minimum(d2, _row_min(len(x), b, exact_sq(x, b, picks, j)), out=d2)

    def _lower_screened(self, x: np.ndarray, members: np.ndarray, d2: np.ndarray, done: int, total: int) -> None:
        """_lower with a bf16 product (selection.screen) as the filter: pairs that can be within d2."""
        if self.pick_low is None:
            self.pick_low = LowRows(max(self.k, 1), self.dim)
            self.x_err, self.x_norm = np.full(len(self.x), np.nan), np.full(len(self.x), np.nan)
        if self.low_filled < total:
            self.pick_low.set_rows(self.low_filled, self.pick_vectors[self.low_filled : total])
            self.low_filled = total
        assert self.x_err is not None and self.x_norm is not None
        missing = np.isnan(self.x_err[members])
        if missing.any():
            self.x_err[members[missing]], self.x_norm[members[missing]], _ = rounding(x[missing])
        # |x - t|^2 <= d2 implies x.t >= (|x|^2 + |t|^2 - d2) / 2 >= 1 - d2 / 2 - (1 - lo)
        slack = max(0.0, 1.0 - self.norms[0]) + 1e-12
        threshold = np.where(np.isfinite(d2), 1.0 - d2 / 2.0, 3.0)  # 3: picked rows, nothing to do
        b, j = self.pick_low.above(x, threshold, slack, done, total, self.x_err[members], self.x_norm[members])
        if len(b):
            self.stats["exact_pairs"] += len(b)
            np.minimum(d2, _row_min(len(x), b, exact_sq(x, b, self.pick_vectors, j)), out=d2)

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
        self.stats["loose_bounds"] += int(np.sum(exact < self.pool_sq[rows]))
        self.stats["pool_pairs"] = self.pool.pairs
        self.pool_sq[rows] = exact
        self.exact_max = max(self.exact_max, float(exact.max()))
        self.pool_exact[rows] = True
        self.level[rows] = self.top_level
        self.d2[rows] = np.minimum(self.d2[rows], exact)
        self._update_max(self.block_of[rows])
        if self.stats["verify_passes"] % _TRIM_EVERY == 0:
            _return_free_memory()

    def _refine(self, rows: np.ndarray) -> None:
        """Tighter hnswlib bounds for these candidates: each one level up (those not at the top level)."""
        if self.refine is None:
            return
        rows = rows[self.level[rows] < self.top_level]
        for level in np.unique(self.level[rows]):
            group = rows[self.level[rows] == level]
            self.stats["refine_passes"] += 1
            self.stats["refined_rows"] += len(group)
            bound = self.refine(group, int(level))
            improved = bound < self.pool_sq[group]
            self.pool_sq[group] = np.minimum(self.pool_sq[group], bound)
            self.d2[group] = np.minimum(self.d2[group], bound)
            # Two refinements that agree, at a distance no larger than an exact one seen already: most
            # likely the nearest (verified next). Otherwise a larger ef: a search that ends in another
            # cluster often ends there again, and its bound sits far above every exact distance.
            settled = ~improved & (level > 0) & (self.pool_sq[group] <= self.exact_max)
            self.level[group] = np.where(settled, self.top_level, level + 1)
        self._update_max(self.block_of[rows])

    def _to_date(self, i: int) -> float:
        """Candidate i's exact current distance (its block brought up to date)."""
        self._refresh(int(self.block_of[i]))
        self._verify(np.array([i]))
        return float(self.d2[i])

    def take(self, i: int) -> None:
        self.pick_d2.append(self._to_date(i))
        self.pick_vectors[len(self.picks)] = self.x[i]
        self.picks.append(i)
        if len(self.picks) % _TRIM_EVERY == 0:
            _return_free_memory()
        self.picked[i] = True
        self.d2[i] = -np.inf
        self._update_max(self.block_of[[i]])

    def argmax(self) -> int:
        total = len(self.picks)
        while True:
            b = int(np.argmax(self.block_max))
            top = self.block_max[b]
            if self.seen[b] < total:
                self._refresh(b)
                continue
            tied = np.flatnonzero(self.block_max == top)  # all of them up to date: lowest index wins
            for t in tied:
                self._refresh(int(t))  # brings the block up to date, and its maximum (which may drop)
            if np.any(self.block_max[tied] != top):
                continue
            members = np.concatenate([self._members(int(t)) for t in tied]) if len(tied) > 1 else self._members(b)
            best = members[self.d2[members] == top]
            if (self.level[best] < self.top_level).any():
                self._refine(self._top_open(self.level < self.top_level, _REFINE_BATCH, best))
            elif not self.pool_exact[best].all():
                self._verify_top(best)
            else:
                return int(best.min())

    def _top_open(self, open_mask: np.ndarray, want: int, extra: np.ndarray) -> np.ndarray:
        """The `want` rows with the largest stored distances among `open_mask`, plus `extra`.

        Blocks are read in order of their maxima (upper bounds) until no unread block can hold a row
        above the `want`-th largest found: a block's other rows are mostly far below its maximum once it
        has been refined or updated, so taking whole blocks would fill a batch with rows that cannot be
        near the top (at 1e6 that refined ~1000 such rows for every one that needed it)."""
        rows = np.empty(0, np.int64)
        kth = -np.inf  # the want-th largest distance among `rows` once there are that many
        for b in np.argsort(-self.block_max, kind="stable"):
            if self.block_max[b] == -np.inf or (len(rows) >= want and self.block_max[b] <= kth):
                break
            members = self._members(int(b))
            members = members[open_mask[members] & np.isfinite(self.d2[members]) & (self.d2[members] > kth)]
            if len(members):
                rows = np.concatenate([rows, members])
                if len(rows) >= 2 * want or (len(rows) >= want and kth == -np.inf):
                    rows = rows[np.argpartition(-self.d2[rows], want - 1)[:want]]
                    kth = float(self.d2[rows].min())
        if len(rows) > want:
            rows = rows[np.argpartition(-self.d2[rows], want - 1)[:want]]
        return np.union1d(rows, extra)

    def _verify_top(self, best: np.ndarray) -> None:
        """Exact pool distances for `best` and the unverified candidates most likely to be picked next,
        in one pass over the pool (one pass costs about the same for 1 row as for 64).

        The batch is chosen by up-to-date bounds: the rows with the largest stored bounds are first
        refined (hnswlib) and brought up to date against every pick (cheap next to a pass over the
        pool), so rows already covered by a pick do not take a place in the batch."""
        best = best[~self.pool_exact[best]]
        want = _VERIFY_BATCH * _VERIFY_POOL_FACTOR
        rows = self._top_open(~self.pool_exact, want, best)
        for _ in range(3 * self.top_level):  # refined bounds drop, which lets other rows into the top `want`
            if (self.level[rows] == self.top_level).all():
                break
            self._refine(rows)
            rows = self._top_open(~self.pool_exact, want, best)
        if len(rows) and self.picks:
            d2 = self.d2[rows]
            self._lower(self.x[rows], d2, 0, len(self.picks))
            self.d2[rows] = d2
            self._update_max(self.block_of[rows])
        rows = rows[~self.pool_exact[rows]]
        if len(rows) > _VERIFY_BATCH:
            rows = rows[np.argsort(-self.d2[rows], kind="stable")[:_VERIFY_BATCH]]
        self._verify(np.union1d(rows, best))  # best itself always, so every pass makes progress
