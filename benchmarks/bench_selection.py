"""Selection at scale: textbook exact greedy k-center vs the production selector, side by side.

Baseline (timed): one pairwise-distance call per pick in float32, the pool's distances as one full
N x M matrix (when it does not fit in memory it is computed in row blocks: same work, and the JSON says
so). Reference (not timed, cached on disk): the same textbook loop in float64, the exact greedy the
selector must reproduce pick for pick (the float32 baseline itself can swap two candidates whose
distances differ by less than its rounding, ~1e-7). Ours: datapool_pipeline.selection.greedy_k_center,
on the exact path (exact seeding) and on the production path (hnswlib upper bounds, verified exactly for
candidates that reach the top), with the index built in the call, and with the datapool's stored index
(datapool/index/: built once per pool sample by earlier runs, so a run only queries it; its one-off build
time is reported beside). The speedup is over interleaved runs (ours, baseline, ours, baseline, ours) so
that load from other jobs on the machine hits both alike.

    python benchmarks/bench_selection.py --quick        # N = M = 20k, k = 200, scaling 1e4 / 3e4, large 5e4
    python benchmarks/bench_selection.py                # N = M = 1e5, k = 1000, scaling 1e4 / 1e5
    python benchmarks/bench_selection.py --large-only   # N = M = 1e6, k = 1e4 with the stored index

The large case (N = M = 1e6, d = 512, k = 1e4) runs the selection in a child process that holds only
the candidates and the stored index (the pool's vectors are read from the index, pool=None), so its
peak RSS (ru_maxrss) is the selection's own, reported relative to the two float32 embedding matrices.
The index and the generated embeddings are kept in --index-dir (as a datapool keeps datapool/index/).
An exact reference is out of reach at 1e6 (1e6 x 1e6 x 512 products), so the large case checks the
greedy invariant in float64 on a random sample instead (--check-sample): each sampled candidate's exact
distance to the pool and the picks before pick t never exceeds pick t's distance (ties: lower index),
and sampled picks' reported distances are their exact distances.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import max_rss_bytes, timed, traced, write_result  # noqa: E402
from datapool_pipeline.selection.kcenter import (  # noqa: E402
    DUPLICATE_SQ_DISTANCE,
    EXACT_SEEDING_MAX_PAIRS,
    KCenterResult,
    build_hnsw_index,
    greedy_k_center,
    hnsw_nearest_sq_distance,
)

NO_LIMIT = 1 << 62
CACHE = Path(tempfile.gettempdir()) / "datapool-bench"


def embeddings(rng: np.random.Generator, n: int, d: int, centers: np.ndarray) -> np.ndarray:
    """Clustered unit vectors, like frame embeddings (scenes = clusters, frames = small variations)."""
    x = centers[rng.integers(len(centers), size=n)] + rng.normal(scale=0.6 / np.sqrt(d), size=(n, d)).astype(
        np.float32
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def dataset(n: int, m: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(100, n // 50), d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    return embeddings(rng, n, d, centers), embeddings(rng, m, d, centers)


def pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of unit vectors as usually written for embeddings: 2 - 2 a.b."""
    return 2.0 - 2.0 * (a @ b.T)


def baseline_greedy(c: np.ndarray, pool: np.ndarray, k: int, full_matrix: bool) -> tuple[list[int], list[float]]:
    if full_matrix:
        d = np.maximum(pairwise_sq(c, pool).min(axis=1), 0.0)
    else:
        rows = max(1, (256 << 20) // (4 * len(pool)))
        d = np.concatenate([pairwise_sq(c[s : s + rows], pool).min(axis=1) for s in range(0, len(c), rows)])
        d = np.maximum(d, 0.0)
    picks: list[int] = []
    pick_d2: list[float] = []
    for _ in range(k):
        masked = d.copy()
        masked[picks] = -np.inf
        i = int(np.argmax(masked))
        picks.append(i)
        pick_d2.append(float(masked[i]))
        d = np.minimum(d, pairwise_sq(c, c[[i]])[:, 0])
    return picks, pick_d2


def _sq64(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """|a - b|^2 for every pair, float64 (|a|^2 + |b|^2 - 2 a.b; error ~1e-15 for unit vectors), snapped
    below DUPLICATE_SQ_DISTANCE like the selector."""
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    d2[d2 < DUPLICATE_SQ_DISTANCE] = 0.0
    return d2


def pool_sq64(c: np.ndarray, pool: np.ndarray, block: int = 8192) -> np.ndarray:
    """Each row of c's float64 squared distance to its nearest pool row (pool read in float64 blocks)."""
    c64 = c.astype(np.float64)
    c_sq = (c64 * c64).sum(1)
    out = np.full(len(c), np.inf)
    for s in range(0, len(pool), block):
        p64 = np.asarray(pool[s : s + block], np.float64)
        np.minimum(out, _sq64(c64, c_sq, p64, (p64 * p64).sum(1)).min(axis=1), out=out)
    return out


def reference_greedy(c: np.ndarray, pool: np.ndarray, k: int) -> dict[str, object]:
    """The textbook loop in float64: exact greedy k-center (ties: lowest index). Also the smallest gap
    between the best and the second-best candidate over all picks, to show that no float64 rounding
    (~1e-15) decides a pick."""
    c64 = c.astype(np.float64)
    c_sq = (c64 * c64).sum(1)
    pool_d2 = np.concatenate([pool_sq64(c[s : s + 4096], pool) for s in range(0, len(c), 4096)])
    d = pool_d2.copy()
    picks: list[int] = []
    pick_d2: list[float] = []
    gaps: list[float] = []
    for _ in range(k):
        masked = d.copy()
        masked[picks] = -np.inf
        top2 = np.argpartition(-masked, 1)[:2]
        i = int(np.argmax(masked))
        gaps.append(float(abs(masked[top2[0]] - masked[top2[1]])))
        picks.append(i)
        pick_d2.append(float(masked[i]))
        np.minimum(d, _sq64(c64, c_sq, c64[[i]], c_sq[[i]])[:, 0], out=d)
    return {"picks": np.array(picks), "pick_d2": np.array(pick_d2), "pool_d2": pool_d2, "gaps": np.array(gaps)}


def cached_reference(c: np.ndarray, pool: np.ndarray, k: int, key: str) -> tuple[dict[str, np.ndarray], float | None]:
    """reference_greedy, kept in CACHE (it depends only on the generated data): (result, seconds or None)."""
    path = CACHE / f"reference-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {name: z[name] for name in z.files}, None
    ref, seconds = timed(lambda: reference_greedy(c, pool, k))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **ref)
    return ref, seconds


def agreement(reference: dict[str, np.ndarray], picks: list[int], pick_d2: np.ndarray) -> dict[str, object]:
    """Identical picks to the float64 reference? If not, where they first differ and by how much the
    reference's squared distance there differs from this run's."""
    ref = [int(i) for i in reference["picks"]]
    first = next((t for t, (a, b) in enumerate(zip(ref, picks, strict=True)) if a != b), None)
    out: dict[str, object] = {"identical_picks": first is None and len(ref) == len(picks)}
    if first is not None:
        out["first_difference_at_pick"] = first
        out["sq_distance_gap_there"] = abs(float(reference["pick_d2"][first]) - float(pick_d2[first]))
        out["reference_top2_gap_there"] = float(reference["gaps"][first])
        out["same_pick_set"] = set(ref) == set(picks)
    return out


def _ours_d2(result: KCenterResult) -> np.ndarray:
    return np.asarray(result.pick_distances, np.float64) ** 2


def compare(n: int, m: int, k: int, d: int, seed: int = 0, rounds: int = 2) -> dict[str, object]:
    cands, pool = dataset(n, m, d, seed)
    matrix_bytes = cands.nbytes
    full_bytes = 4 * n * m
    full = full_bytes <= 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"N={n} M={m} k={k} d={d}: float64 reference (cached in {CACHE}) ...", flush=True)
    reference, ref_s = cached_reference(cands, pool, k, f"n{n}-m{m}-k{k}-d{d}-seed{seed}")
    took = f"{ref_s:.0f}s" if ref_s else "from the cache"
    print(f"  reference {took}; smallest top-2 gap "
          f"{reference['gaps'].min():.2e}", flush=True)
    index, build_s = timed(lambda: build_hnsw_index(pool))

    def stored() -> KCenterResult:
        return greedy_k_center(cands, k, pool=pool, exact_max_pairs=0, pool_index=index)

    def base() -> tuple[list[int], list[float]]:
        return baseline_greedy(cands, pool, k, full)

    # Interleaved: ours, baseline, ours, ..., ours, so a change in the machine's load hits both alike.
    ours_s: list[float] = []
    base_s: list[float] = []
    stored_result, t = timed(stored)
    ours_s.append(t)
    for _ in range(rounds):
        base_result, t = timed(base)
        base_s.append(t)
        print(f"  baseline{'' if full else ' (N x M matrix too big: row blocks)'} {t:.1f}s", flush=True)
        stored_result, t = timed(stored)
        ours_s.append(t)
        print(f"  ours with the stored pool index {t:.1f}s (index built once in {build_s:.1f}s)", flush=True)
    _, _, stored_peak = traced(stored)
    exact, exact_s, exact_peak = traced(lambda: greedy_k_center(cands, k, pool=pool, exact_max_pairs=NO_LIMIT))
    print(f"  ours exact {exact_s:.1f}s", flush=True)
    prod, prod_s, prod_peak = traced(lambda: greedy_k_center(cands, k, pool=pool, exact_max_pairs=0))
    print(f"  ours hnsw+verify (index built in the call) {prod_s:.1f}s", flush=True)
    hnsw_d2, hnsw_query_s = timed(lambda: hnsw_nearest_sq_distance(cands, pool, index=index))
    exact_d2 = reference["pool_d2"]
    speedup = statistics.median(base_s) / statistics.median(ours_s)
    pairs = [b / o for b, o in zip(base_s, ours_s[1:], strict=True)]
    return {
        "n": n, "m": m, "k": k, "d": d,
        "candidate_matrix_bytes": matrix_bytes,
        "reference": {"what": "textbook greedy in float64 (|a|^2 + |b|^2 - 2 a.b), snapped below "
                              f"{DUPLICATE_SQ_DISTANCE:g} like the selector; ties to the lowest index",
                      "seconds": ref_s, "smallest_top2_sq_gap": float(reference["gaps"].min())},
        "baseline": {"seconds": base_s, "full_matrix": full, "full_matrix_bytes": full_bytes,
                     **agreement(reference, base_result[0], np.array(base_result[1]))},
        "ours_stored_index": {"seconds": ours_s, "peak_bytes": stored_peak,
                              "peak_over_candidates": stored_peak / matrix_bytes,
                              **agreement(reference, stored_result.picks, _ours_d2(stored_result)),
                              "index_build_seconds_once": build_s},
        "ours_exact": {"seconds": exact_s, "peak_bytes": exact_peak, "peak_over_candidates": exact_peak / matrix_bytes,
                       **agreement(reference, exact.picks, _ours_d2(exact))},
        "ours_hnsw_verified": {"seconds": prod_s, "peak_bytes": prod_peak,
                               "peak_over_candidates": prod_peak / matrix_bytes,
                               **agreement(reference, prod.picks, _ours_d2(prod))},
        "speedup_stored_index": speedup,
        "speedup_stored_index_per_round": pairs,
        "speedup_exact": statistics.median(base_s) / exact_s,
        "speedup_hnsw_verified": statistics.median(base_s) / prod_s,
        "seeding": {"hnsw_query_seconds": hnsw_query_s,
                    "hnsw_recall": float(np.mean(np.abs(hnsw_d2 - exact_d2) <= 1e-9)),
                    "hnsw_never_nearer": bool(np.all(hnsw_d2 >= exact_d2 - 1e-9))},
    }


def scaling(n: int, k: int, d: int) -> dict[str, object]:
    """The production path at N = M = n: exact seeding below EXACT_SEEDING_MAX_PAIRS, else the stored
    hnswlib index (its one-off build reported separately)."""
    cands, pool = dataset(n, n, d, 1)
    index, build_s = (None, 0.0) if n * n <= EXACT_SEEDING_MAX_PAIRS else timed(lambda: build_hnsw_index(pool))
    result, seconds, peak = traced(lambda: greedy_k_center(cands, k, pool=pool, pool_index=index))
    row = {"n": n, "m": n, "k": k, "seconds": seconds, "peak_bytes": peak,
           "peak_over_candidates": peak / cands.nbytes, "picks": len(result.picks),
           "seeding": "exact" if index is None else "stored hnswlib index", "index_build_seconds_once": build_s}
    print(f"  scaling N=M={n}: {seconds:.1f}s ({row['seeding']}; index build {build_s:.1f}s once), "
          f"peak {peak / 2**20:.0f} MiB", flush=True)
    return row


def large(n: int, k: int, d: int, index_dir: Path, check_sample: int) -> dict[str, object]:
    """The production path at N = M = n with a stored index, in a child process (its peak RSS is the
    selection's): candidates in memory, pool vectors read from the hnswlib index (pool=None)."""
    import hnswlib

    index_dir.mkdir(parents=True, exist_ok=True)
    cands_path, pool_path = index_dir / f"cands-n{n}-seed1.npy", index_dir / f"pool-n{n}-seed1.npy"
    if not (cands_path.exists() and pool_path.exists()):
        cands, pool = dataset(n, n, d, 1)
        np.save(cands_path, cands)
        np.save(pool_path, pool)
        del cands
    else:
        pool = np.load(pool_path, mmap_mode="r")
    matrices = 2 * n * d * 4
    index_path = index_dir / f"index-n{n}-seed1.hnsw"
    build_s = None
    if not index_path.exists():
        started = time.perf_counter()
        index = build_hnsw_index(pool)
        build_s = time.perf_counter() - started
        index.save_index(str(index_path) + ".tmp")
        os.replace(str(index_path) + ".tmp", index_path)
        del index
    else:  # the stored index must hold this pool, row for row
        probe = hnswlib.Index(space="ip", dim=d)
        probe.load_index(str(index_path), max_elements=n)
        rows = np.arange(0, n, max(1, n // 1000))
        assert np.array_equal(np.asarray(probe.get_items(rows)), pool[rows]), f"{index_path} is of other data"
        del probe
    del pool
    how = f"built in {build_s:.0f}s" if build_s else "stored"
    print(f"  large N=M={n} k={k}: selection in a child process (index {how})", flush=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(cands_path), str(index_path), str(k)],
        check=True, capture_output=True, text=True,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    row = {"n": n, "m": n, "k": k, "d": d, "embedding_dtype": "float32", "embedding_matrices_bytes": matrices,
           "peak_rss_over_matrices": child["max_rss_bytes"] / matrices, "index_build_seconds_once": build_s,
           **child}
    print(f"  large N=M={n} k={k}: {child['seconds']:.0f}s ({child['phases']}), "
          f"{child['picks']} picks, peak RSS {child['max_rss_bytes'] / 2**30:.2f} GiB = "
          f"{row['peak_rss_over_matrices']:.2f}x the two float32 matrices; {child['stats']}", flush=True)
    if check_sample:
        result = np.load(str(cands_path).replace(".npy", "-picks.npz"))
        row["check"], check_s = timed(lambda: check_large(cands_path, pool_path, result["picks"],
                                                          result["pick_d2"], check_sample))
        row["check"]["seconds"] = check_s
        print(f"  float64 check on a sample: {row['check']}", flush=True)
    return row


def check_large(cands_path: Path, pool_path: Path, picks: np.ndarray, pick_d2: np.ndarray,
                sample: int) -> dict[str, object]:
    """The greedy invariant, in float64, for `sample` random candidates and sample // 4 random picks:

    - a sampled pick's reported squared distance is its exact distance to the pool and the earlier picks;
    - a sampled candidate's exact distance to the pool and picks 0..t-1 is never above pick t's
      (equal only if the candidate's index is higher), for every t before it is picked itself.
    An exact reference at this size is out of reach; the selector itself verifies every pick exactly."""
    cands = np.load(cands_path, mmap_mode="r")
    pool = np.load(pool_path, mmap_mode="r")
    rng = np.random.default_rng(7)
    n = len(cands)
    who = np.unique(np.concatenate([rng.choice(n, sample, replace=False),
                                    rng.choice(picks, min(len(picks), max(1, sample // 4)), replace=False)]))
    x = np.asarray(cands[who], np.float32)
    to_pool = pool_sq64(x, pool)
    pv = np.asarray(cands[np.sort(picks)], np.float64)[np.argsort(np.argsort(picks))]  # picks in pick order
    x64 = x.astype(np.float64)
    to_picks = _sq64(x64, (x64 * x64).sum(1), pv, (pv * pv).sum(1))  # sample x picks
    # current[s, t]: distance of sample s to the pool and picks 0..t-1, just before pick t
    current = np.minimum(to_pool[:, None], np.minimum.accumulate(
        np.concatenate([np.full((len(who), 1), np.inf), to_picks[:, :-1]], axis=1), axis=1))
    rank = {int(p): t for t, p in enumerate(picks)}
    worst_excess, ties, exact_picks, max_pick_error = -np.inf, 0, 0, 0.0
    for s, i in enumerate(who):
        t_own = rank.get(int(i), len(picks))
        if t_own < len(picks):
            exact_picks += 1
            max_pick_error = max(max_pick_error, abs(float(current[s, t_own]) - float(pick_d2[t_own])))
        before = current[s, :t_own] - pick_d2[:t_own]
        if len(before):
            worst_excess = max(worst_excess, float(before.max()))
            ties += int(np.sum((np.abs(before) <= 1e-12) & (picks[:t_own] > i)))
    return {"sampled_candidates": int(len(who)), "sampled_picks": exact_picks,
            "max_pick_sq_distance_error": max_pick_error,
            "max_excess_over_pick_sq_distance": worst_excess, "tie_violations": ties,
            "invariant_holds": bool(worst_excess <= 1e-12 and ties == 0 and max_pick_error <= 1e-12)}


def child(cands_path: str, index_path: str, k: int) -> None:
    from datapool_pipeline.datapool.pool_index import open_index_file
    from datapool_pipeline.selection import kcenter

    started = time.perf_counter()
    cands = np.load(cands_path)
    index = open_index_file(index_path, cands.shape[1], max_elements=len(cands))  # as load_pool_index returns it
    load_s = time.perf_counter() - started
    states: list[object] = []
    init = kcenter._LazyDistances.__init__

    def spy(self: object, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        states.append(self)

    kcenter._LazyDistances.__init__ = spy  # type: ignore[method-assign]
    phases: dict[str, float] = {"load_candidates_and_index": load_s}

    def timing(name: str, fn: object) -> object:
        def wrapped(*args: object, **kwargs: object) -> object:
            out, phases[name] = timed(lambda: fn(*args, **kwargs))  # type: ignore[operator]
            return out
        return wrapped

    kcenter.hnsw_nearest_sq_distance = timing("hnsw_query", kcenter.hnsw_nearest_sq_distance)  # type: ignore
    verifier_init = kcenter._PoolVerifier.__init__
    kcenter._PoolVerifier.__init__ = timing("bf16_pool_copy", verifier_init)  # type: ignore[method-assign]
    start = time.perf_counter()

    def progress() -> None:  # a line every 30 s in <candidates>.progress, to follow a long run
        with open(cands_path + ".progress", "w") as log:
            while True:
                time.sleep(30)
                state = states[0] if states else None
                log.write(json.dumps({"seconds": round(time.perf_counter() - start), **phases,
                                      "picks": len(getattr(state, "picks", [])),
                                      **getattr(state, "stats", {})}) + "\n")
                log.flush()

    threading.Thread(target=progress, daemon=True).start()
    result = greedy_k_center(cands, k, pool=None, pool_index=index)
    seconds = time.perf_counter() - start
    phases["rest"] = seconds - phases.get("hnsw_query", 0.0) - phases.get("bf16_pool_copy", 0.0)
    np.savez(cands_path.replace(".npy", "-picks.npz"), picks=np.array(result.picks),
             pick_d2=np.asarray(result.pick_distances, np.float64) ** 2)
    print(json.dumps({"seconds": seconds, "phases": {k: round(v, 1) for k, v in phases.items()},
                      "picks": len(result.picks), "stats": getattr(states[0], "stats", {}),
                      "max_rss_bytes": max_rss_bytes(), "last_pick_distance": float(result.pick_distances[-1])}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--large-only", action="store_true", help="only the N = M = 1e6, k = 1e4 case")
    parser.add_argument("--rounds", type=int, default=2, help="baseline runs, each between two of ours")
    parser.add_argument("--check-sample", type=int, default=2000,
                        help="large case: candidates whose greedy invariant is checked in float64 (0: none)")
    parser.add_argument("--index-dir", type=Path, default=CACHE,
                        help="where the large case's hnswlib index and embeddings are kept between runs "
                             "(~6.3 GB at 1e6)")
    args = parser.parse_args()
    large_n, large_k = (50_000, 500) if args.quick else (1_000_000, 10_000)
    if args.large_only:
        row = large(large_n, large_k, 512, args.index_dir, args.check_sample)
        write_result("selection-large", args.quick, {"large": row})
        return
    n, k, sizes = (20_000, 200, [10_000, 30_000]) if args.quick else (100_000, 1000, [10_000, 100_000])
    main_row = compare(n, n, k, 512, rounds=args.rounds)
    rows = [] if args.no_scaling else [scaling(s, k, 512) for s in sizes]
    large_row = large(large_n, large_k, 512, args.index_dir, args.check_sample) if args.quick else None
    print(f"speedup stored index {main_row['speedup_stored_index']:.1f}x (per round "
          f"{', '.join(f'{r:.1f}' for r in main_row['speedup_stored_index_per_round'])}), exact "
          f"{main_row['speedup_exact']:.1f}x, hnsw+verify {main_row['speedup_hnsw_verified']:.1f}x; identical "
          f"picks to the float64 reference: stored {main_row['ours_stored_index']['identical_picks']} / exact "
          f"{main_row['ours_exact']['identical_picks']} / hnsw {main_row['ours_hnsw_verified']['identical_picks']} "
          f"/ float32 baseline {main_row['baseline']['identical_picks']}; hnsw recall "
          f"{main_row['seeding']['hnsw_recall']:.4f}")
    write_result("selection", args.quick, {**main_row, "scaling": rows, "large": large_row,
                                           "max_rss_bytes": max_rss_bytes()})


if __name__ == "__main__":
    main()
