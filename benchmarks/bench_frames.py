"""Embed fewer frames without losing diversity: every frame vs fps sampling vs near-duplicate skipping.

A video with long frozen segments (each of 4 scenes: 1/4 motion, 3/4 one held frame). For each option:
frames embedded, wall time (decode + embed + select), and the coverage radius of the final selection,
measured against the embeddings of *all* frames: max over all frames of the distance to the nearest
selected frame. Target: radius within 5% of the all-frames result.

    python benchmarks/bench_frames.py --quick     # ViT-S-32, 4 x 8 s scenes at 10 fps
    python benchmarks/bench_frames.py             # ViT-B-32, 4 x 30 s scenes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks._common import write_result  # noqa: E402
from benchmarks._video import video_with_static_segments  # noqa: E402
from datapool_pipeline.datasets import EmbeddingSpec  # noqa: E402
from datapool_pipeline.embedding import load_model  # noqa: E402
from datapool_pipeline.media.video import FrameStream  # noqa: E402
from datapool_pipeline.selection import greedy_k_center  # noqa: E402

OPTIONS = {
    "all_frames": {},
    "skip_duplicates": {"skip_duplicates": True},
    "fps_2": {"fps": 2.0},
    "fps_2_skip_duplicates": {"fps": 2.0, "skip_duplicates": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-k", type=int, default=16, help="frames to select")
    args = parser.parse_args()
    model = load_model(EmbeddingSpec(model="ViT-S-32" if args.quick else "ViT-B-32", pretrained=None))
    model.embed(np.zeros((2, model.image_size, model.image_size, 3), np.uint8))
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(video_with_static_segments(Path(tmp) / "static.mp4", segment_s=8 if args.quick else 30))
        all_vectors: np.ndarray | None = None
        all_stamps: np.ndarray | None = None
        for name, options in OPTIONS.items():
            start = time.perf_counter()
            stream = FrameStream(path, model.image_size, **options)
            vectors = np.concatenate(list(model.embed_stream(stream)))
            picks = greedy_k_center(vectors, args.k, seed=0).picks
            seconds = time.perf_counter() - start
            stamps = np.array(stream.timestamps)
            if all_vectors is None:
                all_vectors, all_stamps = vectors, stamps
            assert all_stamps is not None
            # The selected frames are frames of the full video: find them by timestamp.
            chosen = [int(np.argmin(np.abs(all_stamps - stamps[p]))) for p in picks]
            sims = all_vectors @ all_vectors[chosen].T
            radius = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(sims.max(axis=1).min()))))
            rows[name] = {"options": options, "frames_embedded": len(vectors), "seconds": seconds,
                          "coverage_radius": radius}
    base = rows["all_frames"]
    for name, row in rows.items():
        row["frames_ratio"] = row["frames_embedded"] / base["frames_embedded"]  # type: ignore[operator]
        row["time_ratio"] = row["seconds"] / base["seconds"]  # type: ignore[operator]
        row["radius_ratio"] = row["coverage_radius"] / base["coverage_radius"]  # type: ignore[operator]
        row["radius_within_5pct"] = row["radius_ratio"] <= 1.05  # type: ignore[operator]
        print(f"{name:24s} frames {row['frames_embedded']:5d}  {row['seconds']:6.1f}s  time x{row['time_ratio']:.2f}  "
              f"radius {row['coverage_radius']:.4f} (x{row['radius_ratio']:.3f})", flush=True)
    write_result("frames", args.quick, {"model": model.fingerprint, "k": args.k, "results": rows})


if __name__ == "__main__":
    main()
