"""Embeddings per shard: decode at the model's input size, embed in batches, cache per model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding import EmbeddingModel
from datapool_pipeline.media.image import ImageDecodeError, decode_image, resize_center_crop
from datapool_pipeline.media.video import FrameStream
from datapool_pipeline.selection.metadata import METADATA_SCHEMA, FrameStatsRecorder
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow.faults import fault_point
from datapool_pipeline.workflow.frames import extract_shard_frames
from datapool_pipeline.workflow.progress import Log, Throttle, no_log


@dataclass
class ShardEmbeddings:
    shard_id: str
    samples: int
    cached: bool
    seconds: float


def embed_shard(
    spec: DatasetSpec,
    store: DatapoolStore,
    input_storage: Storage,
    model: EmbeddingModel,
    shard: str,
    *,
    force: bool = False,
    log: Log = no_log,
) -> ShardEmbeddings:
    if not force:
        cached = store.read_shard_embeddings(shard, model.fingerprint)
        if cached is not None:
            return ShardEmbeddings(shard, cached.height, cached=True, seconds=0.0)
    files = store.read_shard_files(shard)
    if files is None:
        extract_shard_frames(spec, store, input_storage, shard, log=log)
        files = store.read_shard_files(shard)
        assert files is not None
    ok = files.filter(pl.col("status") == "ok")
    total = int(ok["frames"].sum() or 0)
    throttle = Throttle(log)
    keys: list[str] = []
    versions: list[str] = []
    indices: list[int] = []
    stamps: list[float] = []
    chunks: list[np.ndarray] = []
    done = 0
    # Built-in metadata (selection/metadata.py): frame statistics from the model-size frames as they are
    # embedded, and per raw file its duration, resolution and size.
    stats = FrameStatsRecorder()
    durations: list[float | None] = []
    widths: list[int | None] = []
    heights: list[int | None] = []
    sizes: list[int | None] = []
    if spec.type == "VIDEOS":
        for row in ok.iter_rows(named=True):
            key, version = row["raw_key"], row["raw_version"]
            with input_storage.local_source(key) as source:
                stream = FrameStream(source, model.image_size, **spec.video.frame_options())
                n_before = done
                for batch in model.embed_stream(stats.wrap(stream)):
                    chunks.append(batch)
                    done += len(batch)
                    rate = done / max(throttle.elapsed, 1e-6)
                    throttle(f"shard {shard}: embedded {done}/{total} frames ({rate:.1f} frames/s)")
                n = done - n_before
                keys += [key] * n
                versions += [version] * n
                indices += list(range(n))
                stamps += stream.timestamps[:n]
                durations += [stream.duration] * n
                widths += [stream.width] * n
                heights += [stream.height] * n
                sizes += [row["raw_size"]] * n
    else:

        def images() -> Iterator[np.ndarray]:
            for row in ok.iter_rows(named=True):
                frame = _image_frame(input_storage, row["raw_key"], model.image_size, log,
                                     spec.images.max_decoded_megabytes)
                if frame is not None:
                    keys.append(row["raw_key"])
                    versions.append(row["raw_version"])
                    widths.append(row["width"])
                    heights.append(row["height"])
                    sizes.append(row["raw_size"])
                    yield frame

        for batch in model.embed_stream(stats.wrap(images())):
            chunks.append(batch)
            done += len(batch)
            throttle(f"shard {shard}: embedded {done}/{total} images ({done / max(throttle.elapsed, 1e-6):.1f}/s)")
        indices = [-1] * len(keys)
        stamps = [0.0] * len(keys)
        durations = [None] * len(keys)
    matrix = np.concatenate(chunks) if chunks else np.empty((0, model.dim), np.float32)
    df = pl.DataFrame(
        {
            "raw_key": keys,
            "raw_version": versions,
            "frame_index": indices,
            "timestamp_s": stamps,
            "embedding": matrix,
            "brightness": stats.brightness,
            "contrast": stats.contrast,
            "sharpness": stats.sharpness,
            "duration_s": durations,
            "width": widths,
            "height": heights,
            "file_size": sizes,
        },
        schema={
            "raw_key": pl.String,
            "raw_version": pl.String,
            "frame_index": pl.Int64,
            "timestamp_s": pl.Float64,
            "embedding": pl.Array(pl.Float32, model.dim),
            **METADATA_SCHEMA,
        },
    )
    store.write_shard_embeddings(shard, model.fingerprint, df)
    fault_point("after_embeddings")
    throttle(f"shard {shard}: embedded {done} samples in {throttle.elapsed:.1f}s", final=True)
    return ShardEmbeddings(shard, df.height, cached=False, seconds=throttle.elapsed)


def _image_frame(storage: Storage, key: str, size: int, log: Log, max_decoded_megabytes: int) -> np.ndarray | None:
    try:
        img = decode_image(storage.read_bytes(key), min_side=size, max_decoded_megabytes=max_decoded_megabytes)
    except (ImageDecodeError, OSError) as exc:  # changed since the frames step
        log(f"skipping {key}: {exc}")
        return None
    return resize_center_crop(img, size)
