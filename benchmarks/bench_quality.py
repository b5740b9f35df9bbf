"""Selection quality on generated labelled data: DIVERSITY alone and DIVERSITY + TYPICALITY vs seeded
random selections of the same size.

Data: unit vectors in clusters of different sizes and spreads (the labels), plus ~2% outliers (random
directions: noise frames, encoder glitches), once with an empty datapool and once with a datapool drawn
from the same clusters. Printed side by side: class coverage (clusters with at least one pick), mean and
max coverage radius (distance from each inlier candidate to its nearest datapool-or-selected sample; the
same over all candidates, outliers included, is in the JSON), and the share of outliers picked.
Then the stopping condition: a first run with `stopping_condition_minimum_distance`, and a second run on
near-copies of the first run's data, which should add nothing.

    python benchmarks/bench_quality.py --quick     # 4k candidates, k = 100, 5 random seeds (seconds)
    python benchmarks/bench_quality.py             # 20k candidates, k = 400, 20 random seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_model, timed, write_result  # noqa: E402
from datapool_pipeline.config import parse_run_config  # noqa: E402
from datapool_pipeline.selection import strategies  # noqa: E402

DIM = 64
OUTLIER_SHARE = 0.02
INTRINSIC = 4
NOISE = 0.05
# (relative size, spread): big tight clusters, small loose ones.
CLUSTERS = [(30, 0.25), (20, 0.35), (15, 0.5), (10, 0.3), (8, 0.7), (6, 0.45), (4, 0.9), (3, 0.6), (2, 0.4),
            (2, 0.8)]
STRENGTHS = (0.25, 0.5, 1.0, 2.0)
RECOMMENDED = 1.0
MIN_DISTANCE = 0.5


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(rng: np.random.Generator, n: int, centers: np.ndarray, outliers: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors and their labels (cluster number, -1 for an outlier)."""
    n_out = int(round(OUTLIER_SHARE * n)) if outliers else 0
    weights = np.array([s for s, _ in CLUSTERS], float)
    labels = rng.choice(len(CLUSTERS), size=n - n_out, p=weights / weights.sum())
    # Each cluster varies along a few directions of its own (like a scene's frames: pose, light, camera),
    # plus a little isotropic noise.
    spread = np.array([s for _, s in CLUSTERS])[labels][:, None]
    bases = np.random.default_rng(1).normal(size=(len(CLUSTERS), INTRINSIC, DIM)) / np.sqrt(DIM)
    coords = rng.normal(size=(len(labels), INTRINSIC)) * spread
    x = centers[labels] + np.einsum("ni,nid->nd", coords, bases[labels])
    x += rng.normal(scale=NOISE / np.sqrt(DIM), size=x.shape)
    out = rng.normal(size=(n_out, DIM))
    data = unit(np.concatenate([x, out]))
    lab = np.concatenate([labels, np.full(n_out, -1)])
    order = rng.permutation(n)
    return data[order], lab[order]


def nearest(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    if len(ref) == 0:
        return np.full(len(x), 2.0)
    out = np.empty(len(x))
    for s in range(0, len(x), 2048):
        sims = x[s : s + 2048] @ ref.T
        out[s : s + 2048] = np.sqrt(np.maximum(2.0 - 2.0 * sims.max(axis=1), 0.0))
    return out


def metrics(cand: np.ndarray, labels: np.ndarray, pool: np.ndarray, picks: np.ndarray) -> dict[str, float]:
    covered = nearest(cand, np.concatenate([pool, cand[picks]]))
    inlier = labels >= 0
    picked_labels = labels[picks]
    return {
        "picked": len(picks),
        "class_coverage": float(len(set(picked_labels[picked_labels >= 0].tolist())) / len(CLUSTERS)),
        "mean_radius": float(covered[inlier].mean()),
        "max_radius": float(covered[inlier].max()),
        "mean_radius_all": float(covered.mean()),
        "max_radius_all": float(covered.max()),
        "outliers_picked_share": float((picked_labels < 0).mean()) if len(picks) else 0.0,
    }


def config(typicality: float | None, minimum: float | None = None) -> Any:
    div: dict[str, Any] = {"type": "DIVERSITY"}
    if minimum is not None:
        div["stopping_condition_minimum_distance"] = minimum
    entries = [{"input": {"type": "EMBEDDINGS"}, "strategy": div}]
    if typicality is not None:
        entries.append({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": typicality}})
    return parse_run_config({"selection_config": {"n_samples": 1, "strategies": entries}}).selection_config


def scenario(name: str, cand: np.ndarray, labels: np.ndarray, pool: np.ndarray, k: int, seeds: int
             ) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    randoms = [metrics(cand, labels, pool, np.random.default_rng(s).choice(len(cand), k, replace=False))
               for s in range(seeds)]
    rows["random"] = {m: float(np.mean([r[m] for r in randoms])) for m in randoms[0]}
    rows["random"]["max_radius_seed_range"] = [min(r["max_radius"] for r in randoms),
                                               max(r["max_radius"] for r in randoms)]
    variants: list[tuple[str, float | None]] = [("DIVERSITY", None)]
    variants += [(f"DIVERSITY+TYPICALITY {s:g}", s) for s in STRENGTHS]
    for label, strength in variants:
        out, seconds = timed(lambda s=strength: strategies.select(cand, k, config(s), pool=pool))
        rows[label] = {**metrics(cand, labels, pool, np.array(out.result.picks, int)), "seconds": seconds}
    print(f"\n{name}: {len(cand)} candidates ({OUTLIER_SHARE:.0%} outliers), datapool {len(pool)}, k = {k}, "
          f"random: mean of {seeds} seeds")
    head = f"{'selection':<28}{'classes':>8}{'mean r':>9}{'max r':>8}{'max/rand':>9}{'outliers':>9}"
    print(head)
    for label, r in rows.items():
        ratio = r["max_radius"] / rows["random"]["max_radius"]
        print(f"{label:<28}{r['class_coverage']:>8.2f}{r['mean_radius']:>9.4f}{r['max_radius']:>8.4f}"
              f"{ratio:>9.2f}{r['outliers_picked_share']:>9.1%}")
    return rows


def targets(rows: dict[str, Any], label: str) -> dict[str, bool]:
    r, rnd = rows[label], rows["random"]
    return {
        "mean_radius_le_random": r["mean_radius"] <= rnd["mean_radius"],
        "max_radius_le_0.8x_random": r["max_radius"] <= 0.8 * rnd["max_radius"],
        "outliers_le_share": r["outliers_picked_share"] <= OUTLIER_SHARE,
    }


def stopping(rng: np.random.Generator, centers: np.ndarray, n: int, k: int) -> dict[str, Any]:
    """Run 1 with the minimum distance on an empty datapool, run 2 on near-copies of run 1's data."""
    cand, _ = make_data(rng, n, centers)
    copies = unit(cand + rng.normal(scale=0.002, size=cand.shape))
    out: dict[str, Any] = {"run_2": MINIMUM_DISTANCE_NOTE, "stopping_condition_minimum_distance": MIN_DISTANCE}
    for label, strength in (("DIVERSITY", None), (f"DIVERSITY+TYPICALITY {RECOMMENDED:g}", RECOMMENDED)):
        cfg = config(strength, MIN_DISTANCE)
        first = strategies.select(cand, k, cfg)
        second = strategies.select(copies, k, cfg, pool=cand[first.result.picks])
        out[label] = {
            "first_run": {"requested": k, "selected": len(first.result.picks), "stop_reason": first.stop_reason},
            "second_run_on_near_copies": {"requested": k, "selected": len(second.result.picks),
                                          "stop_reason": second.stop_reason,
                                          "next_pick_distance": second.first_distance},
        }
        print(f"\nstopping_condition_minimum_distance {MIN_DISTANCE}, {label}: run 1 selected "
              f"{len(first.result.picks)} of {k} ({first.stop_reason}); run 2 on near-copies selected "
              f"{len(second.result.picks)} ({second.stop_reason}, next pick at {second.first_distance:.4f})"
              + (" -> the run aborts: nothing left to add" if not second.result.picks else ""))
    return out


MINIMUM_DISTANCE_NOTE = "run 2 = run 1's candidates + N(0, 0.002) per dimension, renormalised"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, k, seeds = (4000, 100, 5) if args.quick else (20000, 400, 20)
    rng = np.random.default_rng(0)
    centers = unit(rng.normal(size=(len(CLUSTERS), DIM)))
    cand, labels = make_data(rng, n, centers)
    pool, _ = make_data(rng, n // 8, centers, outliers=False)
    results = {
        "empty_datapool": scenario("empty datapool", cand, labels, pool[:0], k, seeds),
        "with_datapool": scenario("with a datapool", cand, labels, pool, k, seeds),
    }
    label = f"DIVERSITY+TYPICALITY {RECOMMENDED:g}"
    verdict = {name: {"DIVERSITY": targets(rows, "DIVERSITY"), label: targets(rows, label)}
               for name, rows in results.items()}
    print(f"\ntargets (recommended: {label}):")
    for name, v in verdict.items():
        for sel, t in v.items():
            print(f"  {name:<16}{sel:<28}" + "  ".join(f"{key}={'yes' if ok else 'NO'}" for key, ok in t.items()))
    stop = stopping(rng, centers, n // 2, n // 2)
    write_result("quality", args.quick, {
        "cpu_model": cpu_model(),
        "setup": {"candidates": n, "k": k, "dim": DIM, "random_seeds": seeds, "outlier_share": OUTLIER_SHARE,
                  "clusters": CLUSTERS, "datapool": len(pool),
                  "radius": "distance of each inlier candidate to its nearest datapool-or-selected sample"},
        "recommended": {"strategies": ["DIVERSITY", "TYPICALITY"], "typicality_strength": RECOMMENDED},
        "results": results,
        "targets": verdict,
        "stopping": stop,
    })


if __name__ == "__main__":
    main()
