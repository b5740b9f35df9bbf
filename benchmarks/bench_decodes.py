"""Decodes per video per run, and the decode + embed time: the old three-pass path vs one decode pass.

Old path (before issue 12 item 5): the `frames` step decoded every video at 32 px for a frame manifest
(frames.parquet, never read) and the per-file status, the `embeddings` step decoded every decodable video
again at the model's input size, the commit decoded each selected video a third time for its PNGs. Its
frames step is kept callable here (`old_frames_step`, the removed workflow/frames.py for videos); its
embeddings step is today's `embed_shard` on a shard whose file status exists (the same code path: embed the
files with status ok). Ours: `embed_shard` on a fresh shard (status, manifest and embeddings in one decode),
then the same commit. Both run on the same videos in one process with the same model; each writes its own
datapool, and both must pick the same sample ids. Two models: an open_clip model with random weights (CPU:
the model dominates), and the tests' tiny embedder (`datapool_pipeline_tests/helpers.py`, microseconds per
frame), which stands in for a model fast enough that decoding dominates (a GPU).

Decodes are counted with media/video.py `count_decodes()` (every ffmpeg process the package starts).

    python benchmarks/bench_decodes.py --quick    # ViT-S-32 + tiny, 6 videos of 6 s, 640x360 at 10 fps
    python benchmarks/bench_decodes.py            # ViT-B-32 + tiny, 6 videos of 20 s, 1280x720 at 30 fps
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks._common import write_result  # noqa: E402
from datapool_pipeline.config import parse_run_config  # noqa: E402
from datapool_pipeline.datapool import DatapoolStore, tables  # noqa: E402
from datapool_pipeline.datasets import DatasetSpec, EmbeddingSpec  # noqa: E402
from datapool_pipeline.demo import VIDEO_SOURCES, make_video  # noqa: E402
from datapool_pipeline.embedding import EmbeddingModel, load_model  # noqa: E402
from datapool_pipeline.media.video import FrameStream, count_decodes  # noqa: E402
from datapool_pipeline.storage import LocalStorage  # noqa: E402
from datapool_pipeline.workflow.commit import commit_staged  # noqa: E402
from datapool_pipeline.workflow.discovery import assign_shards, list_inventory, plan_run  # noqa: E402
from datapool_pipeline.workflow.embeddings import embed_shard  # noqa: E402
from datapool_pipeline.workflow.selection import select_for_run  # noqa: E402

OLD_MANIFEST_SIZE = 32  # the removed frames step decoded at 32 px


def old_frames_step(spec: DatasetSpec, store: DatapoolStore, storage: LocalStorage, shard: str) -> None:
    """The removed `frames` step for a videos shard: every member decoded at 32 px; frames.parquet (frame
    index, timestamp, mean luma) and files.parquet (status), files.parquet last."""
    file_rows: list[dict[str, object]] = []
    frame_rows: list[pl.DataFrame] = []
    for member in store.shard_members([shard]).sort("raw_key").iter_rows(named=True):
        key = member["raw_key"]
        info = storage.stat(key)
        if info is None or info.version != member["raw_version"] or info.size == 0:
            file_rows.append({**member, "status": "skipped", "error": "unreadable", "frames": 0})
            continue
        lumas: list[float] = []
        with storage.local_source(key) as source:
            stream = FrameStream(source, OLD_MANIFEST_SIZE, **spec.video.frame_options())
            lumas = [float(frame.mean()) for frame in stream]
        if not lumas:
            file_rows.append({**member, "status": "skipped", "error": stream.error or "no video frames", "frames": 0})
            continue
        n = len(lumas)
        frame_rows.append(pl.DataFrame(
            {"raw_key": [key] * n, "raw_version": [member["raw_version"]] * n, "frame_index": list(range(n)),
             "timestamp_s": stream.timestamps, "mean_luma": lumas},
            schema={"raw_key": pl.String, "raw_version": pl.String, "frame_index": pl.Int64,
                    "timestamp_s": pl.Float64, "mean_luma": pl.Float32},
        ))
        file_rows.append({**member, "status": "ok", "error": stream.error, "frames": n})
    files = pl.DataFrame([{k: row.get(k) for k in tables.FILE_STATUS_SCHEMA} for row in file_rows],
                         schema=tables.FILE_STATUS_SCHEMA)
    root = f"datapool/shards/{shard}"
    store.storage.write_bytes(f"{root}/frames.parquet", tables.to_parquet(pl.concat(frame_rows)))
    store.storage.write_bytes(f"{root}/files.parquet", tables.to_parquet(files))


def one_run(path: str, spec: DatasetSpec, model: EmbeddingModel, n_samples: int) -> dict[str, Any]:
    """A whole run (without Dagster and the report) over a fresh output: decode + embed timed, then select
    and commit; ffmpeg decodes counted per video."""
    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    with count_decodes() as decodes:
        files = list_inventory(spec, input_storage).files
        shards, _ = assign_shards(spec, store, files)
        plan = plan_run(spec, store, input_storage, shards, process_all=False)
        start = time.perf_counter()
        frames_seconds = 0.0
        for shard in shards:
            if path == "old":
                frames_start = time.perf_counter()
                old_frames_step(spec, store, input_storage, shard)
                frames_seconds += time.perf_counter() - frames_start
            embed_shard(spec, store, input_storage, model, shard)
        decode_embed = time.perf_counter() - start
        before_commit = Counter(decodes)
        summary = select_for_run(
            spec, store, plan, parse_run_config({"selection_config": {"n_samples": n_samples}}),
            staging_id=f"bench-{path}", started_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
            fingerprint=model.fingerprint, dim=model.dim,
        )
        commit = commit_staged(spec, store, input_storage, summary.staging_id, run_id=f"bench-{path}")
    samples = store.read_samples(commit)
    per_video = {Path(source).name: n for source, n in decodes.items()}
    selected = set(samples["raw_key"])
    videos = sorted(per_video)
    return {
        "decode_embed_seconds": decode_embed,
        "old_frames_step_seconds": frames_seconds if path == "old" else None,
        "decodes_per_selected_video": sorted({per_video[v] for v in videos if v in selected}),
        "decodes_per_unselected_video": sorted({per_video[v] for v in videos if v not in selected}),
        "decodes_before_commit": sum(before_commit.values()),
        "decodes_total": sum(per_video.values()),
        "selected_videos": len(selected),
        "videos": len(videos),
        "frames": int(store.read_processed(commit)["frames"].sum()),
        "sample_ids": sorted(samples["sample_id"].to_list()),
    }


def compare(name: str, model: EmbeddingModel, folder: Path, tmp: Path, repeats: int) -> dict[str, Any]:
    n_samples = 8
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for r in range(repeats):
        for path in (("old", "new") if r % 2 == 0 else ("new", "old")):  # alternate: the load drifts
            out = tmp / f"out-{path}"
            shutil.rmtree(out, ignore_errors=True)
            spec = DatasetSpec(name="bench", type="VIDEOS", input=str(folder), output=str(out))
            result = one_run(path, spec, model, n_samples)
            runs[path].append(result)
            print(f"{name} {path}: decode+embed {result['decode_embed_seconds']:.1f}s, decodes per selected "
                  f"video {result['decodes_per_selected_video']}, per unselected "
                  f"{result['decodes_per_unselected_video']} ({result['selected_videos']} of {result['videos']} "
                  "selected)", flush=True)
    old, new = runs["old"], runs["new"]
    same_picks = all(o["sample_ids"] == n["sample_ids"] for o in old for n in new)
    old_s = statistics.median(r["decode_embed_seconds"] for r in old)
    new_s = statistics.median(r["decode_embed_seconds"] for r in new)
    frames_s = statistics.median(r["old_frames_step_seconds"] for r in old)
    print(f"{name}: decodes per selected video: old {old[0]['decodes_per_selected_video']}, new "
          f"{new[0]['decodes_per_selected_video']}; per unselected: old {old[0]['decodes_per_unselected_video']}, "
          f"new {new[0]['decodes_per_unselected_video']}")
    print(f"{name}: decode+embed old {old_s:.1f}s (of which the 32 px frames step {frames_s:.1f}s), new "
          f"{new_s:.1f}s: x{new_s / old_s:.2f}; same sample ids: {same_picks}", flush=True)
    if not same_picks:
        raise SystemExit(f"{name}: the old and the new path picked different samples")
    return {
        "model": model.fingerprint,
        "repeats": repeats,
        "n_samples": n_samples,
        "old": {k: v for k, v in old[0].items() if k != "sample_ids"} | {"decode_embed_seconds_median": old_s},
        "new": {k: v for k, v in new[0].items() if k != "sample_ids"} | {"decode_embed_seconds_median": new_s},
        "decode_embed_time_ratio_new_over_old": new_s / old_s,
        "old_frames_step_share_of_old_decode_embed": frames_s / old_s,
        "same_sample_ids": same_picks,
        "runs": {p: [{k: v for k, v in r.items() if k != "sample_ids"} for r in rs] for p, rs in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per path with open_clip (default: 1 quick, 3 full); tiny: at least 5")
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    videos, seconds, fps, size = (6, 6, 10, "640x360") if quick else (6, 20, 30, "1280x720")
    from datapool_pipeline_tests.helpers import tiny_embedder

    clip = load_model(EmbeddingSpec(model="ViT-S-32" if quick else "ViT-B-32", pretrained=None))
    clip.embed(np.zeros((2, clip.image_size, clip.image_size, 3), np.uint8))  # warm-up
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        for i in range(videos):
            source, extra = VIDEO_SOURCES[i % len(VIDEO_SOURCES)]
            make_video(folder / f"v{i}.mp4", source, seconds=seconds, fps=fps, size=size, extra=extra)
        # tiny: at the open_clip model's input size, so both decode the same frames.
        tiny = tiny_embedder(image_size=clip.image_size)
        for name, model, n in (("open_clip", clip, repeats), ("tiny", tiny, max(repeats, 5))):
            results[name] = compare(name, model, folder, Path(tmp), n)
    write_result("decodes", quick, {
        "videos": videos, "seconds_per_video": seconds, "fps": fps, "size": size, **results,
    })


if __name__ == "__main__":
    main()
