"""Selection quality on labelled data: DIVERSITY alone and DIVERSITY + TYPICALITY vs seeded random
selections of the same size, and the speed of the combined greedy (lazy vs the reference).

1. Generated clusters: unit vectors in clusters of different sizes and spreads (the labels), plus ~2%
   outliers (random directions: noise frames, encoder glitches), once with an empty datapool and once with a
   datapool drawn from the same clusters.
2. A labelled image set drawn with PIL (no download): 8 classes of shapes and colours at different sizes,
   positions and backgrounds, 3 of them rare, plus 2% injected outliers (noise, black and blurred frames),
   JPEG-encoded, decoded and embedded by the pipeline's path (media.image.decode_image + resize_center_crop
   + embedding.model.load_model). Rows "rec. + ...": the recommended mix on the images the dataset's
   degenerate-frame filter keeps (FILTERS: drop_black and drop_noise, then also drop_blurred; on the
   built-in metadata of the same model-size frames), its picks measured against all images.
   The open_clip model has random weights (pretrained none: no weights can be
   downloaded here), so its features carry little of the classes; the same images are also embedded by a
   deterministic feature (a 12 x 12 thumbnail + a colour histogram, unit length) in which the classes are
   separable, so that the selection's behaviour is what is measured.
Printed side by side: class coverage (classes with at least one pick), the largest gap between a class's
share of the picks and its share of the data, mean and max coverage radius (distance from each inlier to
its nearest datapool-or-selected sample; over all candidates in the JSON) and the share of outliers picked.
3. The stopping condition: run 1 with `stopping_condition_minimum_distance`, run 2 on near-copies of run
   1's whole input (images: each image re-encoded as JPEG at quality 70 and shifted by 2 pixels, embedded
   again, all of them and those the black + noise filter keeps; clusters: each vector + N(0, 0.002) per
   dimension) against run 1's picks, which should add nothing: without and with `datapool_margin` (MARGIN_FACTOR
   x the minimum distance); on the clusters also run 2 on new data drawn like run 1's, what the margin costs.
4. Speed: weighted_greedy (every candidate rescored per pick) vs lazy_weighted_greedy on the same data, same
   picks, alternated, at several sizes (where select() should switch: LAZY_MIN_CANDIDATES).

    nice python benchmarks/bench_quality.py --quick   # 4k vectors k=100, 1.2k images, speed at 2k-20k (minutes)
    nice python benchmarks/bench_quality.py           # 20k vectors k=400, 3k images, speed at 100k
"""

from __future__ import annotations

import argparse
import io
import os
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
RECOMMENDED = 0.5
MIN_DISTANCE = 0.5
# The recommended mix on the images the dataset's degenerate-frame filter keeps: black + noise at the default
# thresholds; black + blurred + noise with blurred_max_sharpness for this set (its blurred frames score
# 0.15-1.1 at 224 px, but so do its flattest scenes: big flat shapes upscaled from 96 px, 5th percentile 1.1,
# median 13, so the default 20 would drop most of them).
FILTERS = {"rec. + black/noise filter": {"drop_black": True, "drop_noise": True},
           "rec. + black/blur/noise": {"drop_black": True, "drop_blurred": True, "blurred_max_sharpness": 1.2,
                                       "drop_noise": True}}


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


def metrics(cand: np.ndarray, labels: np.ndarray, pool: np.ndarray, picks: np.ndarray, n_classes: int
            ) -> dict[str, float]:
    covered = nearest(cand, np.concatenate([pool, cand[picks]]))
    inlier = labels >= 0
    picked_labels = labels[picks]
    data_share = np.bincount(labels[inlier], minlength=n_classes) / max(int(inlier.sum()), 1)
    picked_inliers = picked_labels[picked_labels >= 0]
    pick_share = np.bincount(picked_inliers, minlength=n_classes) / max(len(picked_inliers), 1)
    return {
        "picked": len(picks),
        "class_coverage": float(len(set(picked_inliers.tolist())) / n_classes),
        "class_share_max_gap": float(np.abs(pick_share - data_share).max()),
        "mean_radius": float(covered[inlier].mean()),
        "max_radius": float(covered[inlier].max()),
        "mean_radius_all": float(covered.mean()),
        "max_radius_all": float(covered.max()),
        "outliers_picked_share": float((picked_labels < 0).mean()) if len(picks) else 0.0,
    }


def config(typicality: float | None, minimum: float | None = None, margin: float | None = None) -> Any:
    div: dict[str, Any] = {"type": "DIVERSITY"}
    if minimum is not None:
        div["stopping_condition_minimum_distance"] = minimum
    if margin:
        div["datapool_margin"] = margin
    entries = [{"input": {"type": "EMBEDDINGS"}, "strategy": div}]
    if typicality is not None:
        entries.append({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": typicality}})
    return parse_run_config({"selection_config": {"n_samples": 1, "strategies": entries}}).selection_config


def scenario(name: str, cand: np.ndarray, labels: np.ndarray, pool: np.ndarray, k: int, seeds: int,
             n_classes: int, outlier_share: float, keeps: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """keeps: per row label, the candidates a degenerate-frame filter keeps: a row for the recommended mix on
    them (its picks measured against all candidates; the random rows stay unfiltered)."""
    rows: dict[str, Any] = {}
    randoms = [metrics(cand, labels, pool, np.random.default_rng(s).choice(len(cand), k, replace=False), n_classes)
               for s in range(seeds)]
    rows["random"] = {m: float(np.mean([r[m] for r in randoms])) for m in randoms[0]}
    rows["random"]["max_radius_seed_range"] = [min(r["max_radius"] for r in randoms),
                                               max(r["max_radius"] for r in randoms)]
    rows["random"]["mean_radius_seed_range"] = [min(r["mean_radius"] for r in randoms),
                                                max(r["mean_radius"] for r in randoms)]
    variants: list[tuple[str, float | None]] = [("DIVERSITY", None)]
    variants += [(f"DIVERSITY+TYPICALITY {s:g}", s) for s in STRENGTHS]
    weight = strategies.typicality_scores(cand)
    for label, strength in variants:
        out, seconds = timed(lambda s=strength: strategies.select(cand, k, config(s), pool=pool))
        picks = np.array(out.result.picks, int)
        rows[label] = {**metrics(cand, labels, pool, picks, n_classes), "seconds": seconds}
        # Why a max radius is what it is: the TYPICALITY weight (0..1) of the worst-covered inlier, and how
        # many outliers weigh at most as much (TYPICALITY cannot tell those apart).
        covered = nearest(cand, np.concatenate([pool, cand[picks]]))
        worst = int(np.flatnonzero(labels >= 0)[np.argmax(covered[labels >= 0])])
        rows[label]["worst_inlier_weight"] = float(weight[worst])
        rows[label]["outliers_weighing_at_most_as_much"] = float((weight[labels < 0] <= weight[worst]).mean())
    for label, keep in (keeps or {}).items():
        kept = np.flatnonzero(keep)
        out, seconds = timed(lambda kept=kept: strategies.select(cand[kept], k, config(RECOMMENDED), pool=pool))
        picks = kept[np.array(out.result.picks, int)]
        rows[label] = {**metrics(cand, labels, pool, picks, n_classes), "seconds": seconds}
    print(f"\n{name}: {len(cand)} candidates ({outlier_share:.0%} outliers), datapool {len(pool)}, k = {k}, "
          f"random: mean of {seeds} seeds")
    print(f"{'selection':<28}{'classes':>8}{'share gap':>10}{'mean r':>9}{'mean/rand':>10}{'max r':>8}"
          f"{'max/rand':>9}{'outliers':>9}")
    for label, r in rows.items():
        print(f"{label:<28}{r['class_coverage']:>8.2f}{r['class_share_max_gap']:>10.3f}{r['mean_radius']:>9.4f}"
              f"{r['mean_radius'] / rows['random']['mean_radius']:>10.3f}{r['max_radius']:>8.4f}"
              f"{r['max_radius'] / rows['random']['max_radius']:>9.3f}{r['outliers_picked_share']:>9.1%}")
    return rows


def targets(rows: dict[str, Any], label: str, outlier_share: float) -> dict[str, bool]:
    r, rnd = rows[label], rows["random"]
    return {
        "mean_radius_le_random": r["mean_radius"] <= rnd["mean_radius"],
        "max_radius_le_0.8x_random": r["max_radius"] <= 0.8 * rnd["max_radius"],
        "outliers_le_share": r["outliers_picked_share"] <= outlier_share,
    }


# --- the labelled image set --------------------------------------------------------------------------------

# (shape, colour, relative size): 3 rare classes (shares 2-3%).
IMAGE_CLASSES = [("circle", (220, 40, 40), 25), ("square", (40, 90, 220), 20), ("triangle", (40, 170, 60), 18),
                 ("circle", (240, 200, 30), 14), ("square", (230, 120, 20), 12), ("triangle", (150, 50, 200), 5),
                 ("circle", (30, 200, 200), 3), ("square", (240, 240, 240), 3)]
IMAGE_SIDE = 96
IMAGE_MODEL = "ViT-S-32"


def model_space(model: str, pretrained: str | None) -> str:
    """The name of the open_clip embedding space in the printout and the JSON."""
    return f"open_clip {model} {pretrained or 'random weights'}"


def draw_image(rng: np.random.Generator, label: int) -> Any:
    """One picture of class `label` (a shape of its colour, at a random size and place, on a random dark
    background with some clutter), or an outlier for label -1: noise, black or a blurred scene."""
    from PIL import Image, ImageDraw, ImageFilter

    if label < 0:
        kind = rng.integers(3)
        if kind == 0:
            return Image.fromarray(rng.integers(0, 256, size=(IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
        if kind == 1:
            return Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), tuple(int(v) for v in rng.integers(0, 12, 3)))
        return draw_image(rng, int(rng.integers(len(IMAGE_CLASSES)))).filter(ImageFilter.GaussianBlur(12))
    shape, colour, _ = IMAGE_CLASSES[label]
    background = tuple(int(v) for v in rng.integers(20, 90, 3))
    img = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), background)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):  # clutter: small grey marks
        x0, y0 = rng.integers(0, IMAGE_SIDE - 8, 2)
        grey = int(rng.integers(60, 160))
        draw.rectangle([int(x0), int(y0), int(x0) + 6, int(y0) + 6], fill=(grey, grey, grey))
    size = int(rng.integers(28, 70))
    x0, y0 = (int(v) for v in rng.integers(0, IMAGE_SIDE - size, 2))
    tint = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    box = [x0, y0, x0 + size, y0 + size]
    if shape == "circle":
        draw.ellipse(box, fill=tint)
    elif shape == "square":
        draw.rectangle(box, fill=tint)
    else:
        draw.polygon([(x0 + size // 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=tint)
    return img


def jpeg(img: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def near_copy(data: bytes, rng: np.random.Generator) -> bytes:
    """A realistic near-copy: the image decoded, shifted by 2 pixels (edge pixels repeated) and re-encoded
    as JPEG at quality 70."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    dy, dx = (int(v) for v in rng.choice([-2, 2], 2))
    shifted = np.roll(pixels, (dy, dx), axis=(0, 1))
    return jpeg(Image.fromarray(shifted), quality=70)


def make_images(rng: np.random.Generator, n: int) -> tuple[list[bytes], np.ndarray]:
    n_out = int(round(OUTLIER_SHARE * n))
    weights = np.array([c[2] for c in IMAGE_CLASSES], float)
    labels = np.concatenate([rng.choice(len(IMAGE_CLASSES), size=n - n_out, p=weights / weights.sum()),
                             np.full(n_out, -1)])[rng.permutation(n)]
    return [jpeg(draw_image(rng, int(label))) for label in labels], labels


def degenerate_filters(images: list[bytes], size: int, labels: np.ndarray
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per FILTERS row, which images the dataset's degenerate-frame filter keeps, from the built-in metadata
    computed as the embedding pass does (the same model-size frames), and what it dropped by reason and label."""
    import polars as pl

    from datapool_pipeline.datasets import FilterSpec
    from datapool_pipeline.media.image import load_image, resize_center_crop
    from datapool_pipeline.selection import metadata

    decoded = [load_image(b, min_side=size) for b in images]
    stats = metadata.FrameStatsRecorder()
    for _ in stats.wrap(resize_center_crop(d.image, size) for d in decoded):
        pass
    correlation = [metadata.pixel_correlation(c, size, d.width, d.height)
                   for c, d in zip(stats.correlations, decoded, strict=True)]
    df = pl.DataFrame({"brightness": stats.brightness, "sharpness": stats.sharpness, "pixel_correlation": correlation})
    keeps, report = {}, {}
    for label, settings in FILTERS.items():
        rules = FilterSpec(**settings)
        drop, counts, _ = metadata.degenerate_frames(df, rules)
        keeps[label] = ~drop
        report[label] = {"rules": rules.model_dump(), "dropped": counts, "outliers": int((labels < 0).sum()),
                         "outliers_dropped": int((drop & (labels < 0)).sum()),
                         "inliers_dropped": int((drop & (labels >= 0)).sum())}
        print(f"images, {label}: drops {counts}: {report[label]['outliers_dropped']} of {report[label]['outliers']} "
              f"outliers, {report[label]['inliers_dropped']} inliers")
    return keeps, report


def embed_model(images: list[bytes], model: Any) -> np.ndarray:
    """The pipeline's image path: decode_image (min_side = the model's input), resize_center_crop, embed."""
    from datapool_pipeline.media.image import decode_image, resize_center_crop

    size = model.image_size
    frames = [resize_center_crop(decode_image(b, min_side=size), size) for b in images]
    out = [model.embed(np.stack(frames[s : s + 64])) for s in range(0, len(frames), 64)]
    return np.concatenate(out).astype(np.float32)


def embed_features(images: list[bytes]) -> np.ndarray:
    """A deterministic feature in which the classes are separable: a 12 x 12 thumbnail (shape, place) and an
    8-bin-per-channel colour histogram, centred and unit length."""
    from PIL import Image

    rows = []
    for b in images:
        img = Image.open(io.BytesIO(b)).convert("RGB")
        thumb = np.asarray(img.resize((12, 12), Image.Resampling.BILINEAR), np.float32).ravel() / 255.0
        pixels = np.asarray(img).reshape(-1, 3) // 32
        hist = np.concatenate([np.bincount(pixels[:, c], minlength=8) for c in range(3)]) / len(pixels)
        rows.append(np.concatenate([thumb * 0.5, hist * 4.0]))
    x = np.array(rows, np.float32)
    return unit(x - x.mean(axis=0))


def image_set(n: int, k: int, seeds: int, model: Any, model_name: str) -> dict[str, Any]:
    """`model`: the loaded open_clip model whose embedding space is named `model_name` (model_space)."""
    rng = np.random.default_rng(7)
    images, labels = make_images(rng, n)
    pool_images, _ = make_images(np.random.default_rng(8), n // 8)
    (emb, pool_emb), embed_s = timed(lambda: (embed_model(images, model), embed_model(pool_images, model)))
    feats_all = embed_features(images + pool_images)
    keeps, dropped = degenerate_filters(images, model.image_size, labels)
    spaces = {model_name: (emb, pool_emb),
              "deterministic features": (feats_all[:n], feats_all[n:])}
    out: dict[str, Any] = {"images": n, "k": k, "classes": [f"{s} {c}" for s, c, _ in IMAGE_CLASSES],
                           "class_shares": [w / sum(c[2] for c in IMAGE_CLASSES) for *_, w in IMAGE_CLASSES],
                           "embed_seconds": embed_s, "filter": dropped}
    for space, (cand, pool) in spaces.items():
        # Datapool: images of the same classes, no outliers (a curated earlier selection).
        out[space] = {
            "empty_datapool": scenario(f"images, {space}, empty datapool", cand, labels, pool[:0], k, seeds,
                                       len(IMAGE_CLASSES), OUTLIER_SHARE, keeps),
            "with_datapool": scenario(f"images, {space}, with a datapool", cand, labels, pool, k, seeds,
                                      len(IMAGE_CLASSES), OUTLIER_SHARE, keeps),
        }
    out["stopping"] = image_stopping(images, model, spaces, keeps[STOP_FILTER], labels, model_name)
    return out


# --- the stopping condition --------------------------------------------------------------------------------

def second_run(cand: np.ndarray, copies: np.ndarray, k: int, minimum: float, label: str,
               strength: float | None, margin: float = 0.0, fresh: np.ndarray | None = None) -> dict[str, Any]:
    """Run 1 on `cand` (empty datapool), run 2 on `copies` against run 1's picks; with `fresh` (new data of
    the same kind), also run 2 on it: what the margin costs where the data is really new."""
    cfg = config(strength, minimum, margin)
    first = strategies.select(cand, k, cfg)
    pool = cand[first.result.picks]
    second = strategies.select(copies, k, cfg, pool=pool)
    covered = nearest(cand, cand[first.result.picks])
    moved = np.sqrt(np.maximum(2 - 2 * np.einsum("ij,ij->i", cand, copies), 0))
    row = {
        "first_run": {"requested": k, "selected": len(first.result.picks), "stop_reason": first.stop_reason},
        "second_run_on_near_copies": {"requested": k, "selected": len(second.result.picks),
                                      "stop_reason": second.stop_reason,
                                      # the first pick's distance; with no pick, the farthest copy's
                                      "first_distance": second.first_distance},
        # Run 1's candidates whose coverage distance is within the copies' largest move of the minimum:
        # only their copies can land beyond it.
        "run_1_within_max_copy_move_of_minimum": int(((covered >= minimum - moved.max()) & (covered < minimum)).sum()),
        "datapool_margin": margin,
    }
    if fresh is not None:
        new = strategies.select(fresh, k, cfg, pool=pool)
        reach = nearest(fresh, np.concatenate([pool, fresh[new.result.picks]]))
        row["second_run_on_new_data"] = {"selected": len(new.result.picks), "max_radius": float(reach.max()),
                                         "mean_radius": float(reach.mean())}
    print(f"  {label:<34} run 1 selected {len(first.result.picks)} of {k} ({first.stop_reason}); run 2 on "
          f"near-copies selected {len(second.result.picks)} ({second.stop_reason}, "
          f"{'first pick' if second.result.picks else 'farthest copy'} at {second.first_distance:.4f})"
          + ("" if second.result.picks else " -> the run aborts: nothing left to add")
          + (f"; on new data selected {row['second_run_on_new_data']['selected']}, max radius "
             f"{row['second_run_on_new_data']['max_radius']:.3f}" if fresh is not None else ""))
    return row


def copy_distances(cand: np.ndarray, copies: np.ndarray) -> dict[str, float]:
    moved = np.sqrt(np.maximum(2 - 2 * np.einsum("ij,ij->i", cand, copies), 0))
    nn = np.sort(np.sqrt(np.maximum(2 - 2 * (cand @ cand.T), 0)), axis=1)[:, 1]
    return {"copy_distance_median": float(np.median(moved)), "copy_distance_p99": float(np.quantile(moved, 0.99)),
            "copy_distance_max": float(moved.max()), "nearest_other_sample_median": float(np.median(nn))}


def stopping_runs(name: str, cand: np.ndarray, copies: np.ndarray, factor: float,
                  fresh: np.ndarray | None = None) -> dict[str, Any]:
    """Runs 1 and 2 with the minimum distance = `factor` x the median distance of a sample to its near-copy,
    without and with the recommended datapool_margin (MARGIN_FACTOR x the minimum distance)."""
    dist = copy_distances(cand, copies)
    minimum = factor * dist["copy_distance_median"]
    print(f"\nstopping, {name}: near-copies moved by {dist['copy_distance_median']:.4f} (median), "
          f"{dist['copy_distance_p99']:.4f} (99th percentile), {dist['copy_distance_max']:.4f} (max); nearest other "
          f"sample {dist['nearest_other_sample_median']:.4f} (median); minimum distance {factor:g} x median = "
          f"{minimum:.4f} (cosine similarity {1 - minimum ** 2 / 2:.4f})")
    out: dict[str, Any] = {**dist, "factor_of_copy_median": factor, "stopping_condition_minimum_distance": minimum}
    for label, strength in (("DIVERSITY", None), (f"DIVERSITY+TYPICALITY {RECOMMENDED:g}", RECOMMENDED)):
        for margin in (0.0, MARGIN_FACTOR * minimum):
            named = label + (f", margin {margin:.3f}" if margin else "")
            out[named] = second_run(cand, copies, len(cand), minimum, named, strength, margin, fresh)
    return out


def image_stopping(images: list[bytes], model: Any, spaces: dict[str, Any], keep: np.ndarray,
                   labels: np.ndarray, model_name: str) -> dict[str, Any]:
    """Both runs on all images, and on the images the black + noise filter keeps (the filter run on the
    copies too, as the second run would)."""
    rng = np.random.default_rng(9)
    copies = [near_copy(b, rng) for b in images]
    copy_keeps, _ = degenerate_filters(copies, model.image_size, labels)
    kept = keep & copy_keeps[STOP_FILTER]
    out: dict[str, Any] = {"near_copies": "each image shifted by 2 pixels and re-encoded as JPEG at quality 70",
                           "filtered": f"{STOP_FILTER}: {int(kept.sum())} of {len(images)} images and copies kept"}
    embedded = {model_name: embed_model(copies, model), "deterministic features": None}
    feats = embed_features(images + copies)  # centred together, as one embedding space
    for space, (cand, _) in spaces.items():
        copy = embedded[space]
        if copy is None:
            cand, copy = feats[: len(images)], feats[len(images) :]
        out[space] = {f: stopping_runs(f"images, {space}", cand, copy, f) for f in STOP_FACTORS}
        out[f"{space}, {STOP_FILTER}"] = {f: stopping_runs(f"images, {space}, {STOP_FILTER}", cand[kept], copy[kept], f)
                                          for f in STOP_FACTORS}
    return out


STOP_FACTORS = (4.0, 8.0)
# The recommended datapool_margin, as a multiple of the minimum distance.
MARGIN_FACTOR = 1.0
STOP_FILTER = "rec. + black/noise filter"


def synthetic_stopping(rng: np.random.Generator, centers: np.ndarray, n: int) -> dict[str, Any]:
    cand, _ = make_data(rng, n, centers)
    copies = unit(cand + rng.normal(scale=0.002, size=cand.shape))
    fresh, _ = make_data(rng, n, centers)
    out = {"near_copies": "each vector + N(0, 0.002) per dimension, renormalised",
           "new_data": f"{n} new vectors drawn like the first run's (what the margin costs on new data)"}
    out.update({str(f): stopping_runs("clusters", cand, copies, f, fresh) for f in STOP_FACTORS})
    print(f"\nstopping, clusters: absolute minimum distance {MIN_DISTANCE}")
    both = (("DIVERSITY", None), (f"DIVERSITY+TYPICALITY {RECOMMENDED:g}", RECOMMENDED))
    out["absolute_0.5"] = {label: second_run(cand, copies, n, MIN_DISTANCE, label, s) for label, s in both}
    return out


def stopping_verdict(spaces: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Per space, minimum-distance factor and selection: did run 2 on the near-copies select nothing?"""
    out = {}
    for space, factors in spaces.items():
        for factor, rows in factors.items():
            if not isinstance(rows, dict) or "factor_of_copy_median" not in rows:
                continue
            for sel, row in rows.items():
                if isinstance(row, dict) and "second_run_on_near_copies" in row:
                    out[f"{space}, {factor} x copy median: {sel}"] = row["second_run_on_near_copies"]["selected"] == 0
    return out


# --- speed of the combined greedy --------------------------------------------------------------------------

def speed(sizes: tuple[int, ...], k: int, repeats: int) -> dict[str, Any]:
    """weighted_greedy vs lazy_weighted_greedy (DIVERSITY + TYPICALITY 0.5, empty datapool and a datapool)
    on 512-d clustered vectors of each size: the same picks, alternated runs, best of `repeats`."""
    from datapool_pipeline.selection import kcenter

    out: dict[str, Any] = {"k": k, "dim": 512, "repeats": repeats,
                           "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
                           "LAZY_MIN_CANDIDATES": strategies.LAZY_MIN_CANDIDATES, "sizes": {}}
    for n in sizes:
        rng = np.random.default_rng(11)
        dim = 512
        centers = rng.normal(size=(200, dim))
        x = centers[rng.integers(200, size=n)] + rng.normal(size=(n, dim)) * 0.08
        x = unit(x + rng.normal(size=(n, 8)) @ rng.normal(size=(8, dim)) * 0.3)
        hood, hood_s = timed(lambda x=x: strategies.typicality_neighbours(x))
        pool = unit(centers[rng.integers(200, size=n // 10)] + rng.normal(size=(n // 10, dim)) * 0.08)
        rows: dict[str, Any] = {"candidates": n, "neighbours_seconds": hood_s}
        for name, p in (("empty_datapool", pool[:0]), ("with_datapool", pool)):
            sq = kcenter.nearest_pool_distance(x, p)
            times: dict[str, list[float]] = {"reference": [], "lazy": []}
            picks: dict[str, list[int]] = {}
            for r in range(repeats):
                order = [("lazy", strategies.lazy_weighted_greedy), ("reference", strategies.weighted_greedy)]
                for label, fn in order if r % 2 == 0 else order[::-1]:
                    res, s = timed(lambda fn=fn, sq=sq, x=x, hood=hood: fn(x, k, sq, hood,
                                                                           typicality_strength=RECOMMENDED))
                    times[label].append(s)
                    picks[label] = res.result.picks
            row = {"reference_seconds": min(times["reference"]), "lazy_seconds": min(times["lazy"]),
                   "reference_runs": times["reference"], "lazy_runs": times["lazy"],
                   "speedup": min(times["reference"]) / min(times["lazy"]),
                   "same_picks": picks["lazy"] == picks["reference"], "datapool": len(p)}
            rows[name] = row
            print(f"\nspeed, {name}: {n} candidates, k = {k}: reference {row['reference_seconds']:.2f} s, lazy "
                  f"{row['lazy_seconds']:.2f} s -> {row['speedup']:.2f}x, same picks: {row['same_picks']}", flush=True)
        out["sizes"][str(n)] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=IMAGE_MODEL, help=f"open_clip architecture for the image set (default "
                        f"{IMAGE_MODEL}, which open_clip has no weights for)")
    parser.add_argument("--pretrained", default=None, metavar="TAG",
                        help="its weights (e.g. --model ViT-B-32 --pretrained laion2b_s34b_b79k, or a local checkpoint "
                        "path; needs the weights): the image set on real features. Default: random weights")
    args = parser.parse_args()
    from datapool_pipeline.datasets import EmbeddingSpec
    from datapool_pipeline.embedding.model import ModelLoadError, load_model

    try:  # loaded first, so that missing weights fail before minutes of work, saying what to do
        image_model = load_model(EmbeddingSpec(model=args.model, pretrained=args.pretrained, seed=0))
    except ModelLoadError as exc:
        raise SystemExit(f"bench_quality: {exc}") from None
    n, k, seeds = (4000, 100, 20) if args.quick else (20000, 400, 50)
    n_img, k_img = (1200, 60) if args.quick else (3000, 150)
    sizes, k_speed, repeats = ((2000, 5000, 20000), 200, 2) if args.quick else ((20000, 100000), 500, 2)
    rng = np.random.default_rng(0)
    centers = unit(rng.normal(size=(len(CLUSTERS), DIM)))
    cand, labels = make_data(rng, n, centers)
    pool, _ = make_data(rng, n // 8, centers, outliers=False)
    results = {
        "empty_datapool": scenario("clusters, empty datapool", cand, labels, pool[:0], k, seeds, len(CLUSTERS),
                                   OUTLIER_SHARE),
        "with_datapool": scenario("clusters, with a datapool", cand, labels, pool, k, seeds, len(CLUSTERS),
                                  OUTLIER_SHARE),
    }
    images = image_set(n_img, k_img, seeds, image_model, model_space(args.model, args.pretrained))
    label = f"DIVERSITY+TYPICALITY {RECOMMENDED:g}"
    verdict: dict[str, Any] = {}
    for name, rows in results.items():
        verdict[f"clusters {name}"] = {sel: targets(rows, sel, OUTLIER_SHARE) for sel in ("DIVERSITY", label)}
    for space in (model_space(args.model, args.pretrained), "deterministic features"):
        for name in ("empty_datapool", "with_datapool"):
            rows = images[space][name]
            verdict[f"images {space} {name}"] = {sel: targets(rows, sel, OUTLIER_SHARE)
                                                  for sel in ("DIVERSITY", label, *FILTERS)}
    print(f"\ntargets (recommended: {label}):")
    for name, v in verdict.items():
        for sel, t in v.items():
            print(f"  {name:<58}{sel:<28}" + "  ".join(f"{key}={'yes' if ok else 'NO'}" for key, ok in t.items()))
    stop = synthetic_stopping(rng, centers, n // 2)
    verdict["stopping: a second run on near-copies adds nothing"] = stopping_verdict(
        {"clusters": stop, **{f"images {space}": runs for space, runs in images["stopping"].items()
                              if isinstance(runs, dict)}})
    print("\nstopping target (run 2 on near-copies selects nothing, so the run aborts):")
    for sel, ok in verdict["stopping: a second run on near-copies adds nothing"].items():
        print(f"  {sel:<100}{'yes' if ok else 'NO'}")
    fast = speed(sizes, k_speed, repeats)
    write_result("quality", args.quick, {
        "cpu_model": cpu_model(),
        "setup": {"candidates": n, "k": k, "dim": DIM, "random_seeds": seeds, "outlier_share": OUTLIER_SHARE,
                  "clusters": CLUSTERS, "datapool": len(pool), "image_model": args.model,
                  "image_model_pretrained": args.pretrained,
                  "radius": "distance of each inlier candidate to its nearest datapool-or-selected sample",
                  "class_share_max_gap": "largest |share of the picks - share of the data| over the classes"},
        "recommended": {"strategies": ["DIVERSITY", "TYPICALITY"], "typicality_strength": RECOMMENDED},
        "results": results,
        "images": images,
        "targets": verdict,
        "stopping": stop,
        "speed": fast,
    })


if __name__ == "__main__":
    main()
