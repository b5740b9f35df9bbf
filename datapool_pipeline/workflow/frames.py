"""Frames per shard: decode every raw file once, record a frame manifest and per-file status.

Bad files (corrupt, truncated, empty, not media, unsupported codec) are recorded as skipped with
the reason; they never fail the shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.media.image import ImageDecodeError, load_image
from datapool_pipeline.media.video import FrameStream
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow.faults import fault_point
from datapool_pipeline.workflow.progress import Log, Throttle, no_log

# The manifest pass only needs timestamps and cheap statistics: decode small (a large image is decoded at
# reduced size, so its mean_luma may differ slightly from a full-resolution decode's).
MANIFEST_SIZE = 32


@dataclass
class ShardFrames:
    shard_id: str
    files: int
    frames: int
    skipped: list[tuple[str, str]]
    cached: bool


def summarize(shard: str, files: pl.DataFrame, cached: bool) -> ShardFrames:
    bad = files.filter(pl.col("status") != "ok")
    return ShardFrames(
        shard_id=shard,
        files=files.height,
        frames=int(files["frames"].sum() or 0),
        skipped=list(zip(bad["raw_key"], bad["error"], strict=True)),
        cached=cached,
    )


def extract_shard_frames(
    spec: DatasetSpec,
    store: DatapoolStore,
    input_storage: Storage,
    shard: str,
    *,
    force: bool = False,
    log: Log = no_log,
) -> ShardFrames:
    existing = None if force else store.read_shard_files(shard)
    if existing is not None:
        return summarize(shard, existing, cached=True)
    members = store.shard_members([shard])
    if members.height == 0:
        raise ValueError(f"shard {shard} is not registered in {store.storage.uri}")
    file_rows: list[dict[str, object]] = []
    frame_rows: list[pl.DataFrame] = []
    for member in members.sort("raw_key").iter_rows(named=True):
        status, frames_df = _decode_member(spec, input_storage, member, log)
        file_rows.append({**member, **status})
        if frames_df is not None:
            frame_rows.append(frames_df)
        if status["status"] != "ok":
            log(f"skipping {member['raw_key']}: {status['error']}")
    files = pl.DataFrame(
        [{k: row.get(k) for k in tables.FILE_STATUS_SCHEMA} for row in file_rows], schema=tables.FILE_STATUS_SCHEMA
    )
    frames = pl.concat(frame_rows) if frame_rows else tables.empty(tables.FRAME_SCHEMA)
    store.write_shard_frames(shard, files, frames)
    fault_point("after_frames")
    result = summarize(shard, files, cached=False)
    log(f"shard {shard}: {result.files} file(s), {result.frames} frame(s), {len(result.skipped)} skipped")
    return result


def _decode_member(
    spec: DatasetSpec, storage: Storage, member: dict[str, object], log: Log
) -> tuple[dict[str, object], pl.DataFrame | None]:
    key = str(member["raw_key"])
    info = storage.stat(key)
    if info is None or info.version != member["raw_version"]:
        return _skipped("removed or overwritten since discovery"), None
    if info.size == 0:
        return _skipped("empty file"), None
    if spec.type == "IMAGES":
        try:
            decoded = load_image(storage.read_bytes(key), min_side=MANIFEST_SIZE,
                                 max_decoded_megabytes=spec.images.max_decoded_megabytes)
        except ImageDecodeError as exc:
            return _skipped(str(exc)), None
        img = decoded.image
        luma = float(np.asarray(img.convert("L").resize((MANIFEST_SIZE, MANIFEST_SIZE))).mean())
        frames = pl.DataFrame(
            {"raw_key": [key], "raw_version": [member["raw_version"]], "frame_index": [-1],
             "timestamp_s": [0.0], "mean_luma": [luma]},
            schema=tables.FRAME_SCHEMA,
        )
        return {"status": "ok", "error": None, "frames": 1, "width": decoded.width, "height": decoded.height}, frames
    throttle = Throttle(log)
    lumas: list[float] = []
    with storage.local_source(key) as source:
        stream = FrameStream(source, MANIFEST_SIZE, **spec.video.frame_options())
        for frame in stream:
            lumas.append(float(frame.mean()))
            throttle(f"{key}: decoded {len(lumas)} frames")
    if not lumas:
        return _skipped(stream.error or "no video frames"), None
    if stream.error:
        log(f"{key}: {stream.error}; keeping the {len(lumas)} frames decoded before it")
    n = len(lumas)
    frames = pl.DataFrame(
        {"raw_key": [key] * n, "raw_version": [member["raw_version"]] * n, "frame_index": list(range(n)),
         "timestamp_s": stream.timestamps, "mean_luma": lumas},
        schema=tables.FRAME_SCHEMA,
    )
    return {"status": "ok", "error": stream.error, "frames": n, "width": None, "height": None}, frames


def _skipped(reason: str) -> dict[str, object]:
    return {"status": "skipped", "error": reason, "frames": 0, "width": None, "height": None}
