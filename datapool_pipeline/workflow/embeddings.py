"""Embeddings per shard, in one decode of each raw file: per-file status, frame manifest and embeddings.

Each video is decoded once, at the model's input size (ffmpeg scales and centre-crops), and each image
once (Pillow, reduced towards the model's input size). That one decode records:

- the shard's per-file status (`datapool/shards/<shard>/files.parquet`: ok, or skipped with the reason;
  frames per file). Bad files (removed or overwritten since discovery, empty, corrupt, truncated, not
  media, unsupported codec) are skipped with the reason; they never fail the shard. A video that fails
  part-way keeps the frames decoded before the failure (status ok, the reason in `error`);
- the frame manifest and the embeddings, as rows of the shard's embeddings table for the model
  (`datapool/shards/<shard>/embeddings/<model>.parquet`): raw file, frame index, timestamp, the built-in
  per-frame statistics of selection/metadata.py (brightness, contrast, sharpness, pixel_correlation:
  computed on the model-size frame the model sees) and per file its duration, resolution and size.

Frame indices count the frames ffmpeg yields with the dataset's frame options, before any scaling
(media/video.py), so they do not depend on the decode size or the model: re-embedding with another model
gives the same sample ids, and the commit extracts the same frames at full resolution.

Order of writes (crash safety): files.parquet, then the embeddings. A shard is done when both exist (the
embeddings are written only after the file status, also by the older frames step). With the file status
present but no embeddings for the model (a new model, or a crash between the two writes), only the files
with status ok are decoded again, to embed them; shards written by older versions (files.parquet,
frames.parquet, embeddings) are read as they are, and their frames.parquet is no longer read or written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding import EmbeddingModel
from datapool_pipeline.media.image import ImageDecodeError, load_image, resize_center_crop
from datapool_pipeline.media.video import FrameStream
from datapool_pipeline.selection.metadata import METADATA_SCHEMA, FrameStatsRecorder, pixel_correlation
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow.faults import fault_point
from datapool_pipeline.workflow.progress import Log, Throttle, no_log


@dataclass
class ShardEmbeddings:
    shard_id: str
    samples: int  # rows of the shard's embeddings table for the model
    cached: bool  # nothing decoded: the shard's file status and embeddings existed
    seconds: float
    files: int = 0  # raw files of the shard (file status rows)
    frames: int = 0  # frames (images) of the files with status ok
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (raw key, reason)


def _result(shard: str, files: pl.DataFrame, samples: int, *, cached: bool, seconds: float) -> ShardEmbeddings:
    bad = files.filter(pl.col("status") != "ok")
    return ShardEmbeddings(
        shard_id=shard,
        samples=samples,
        cached=cached,
        seconds=seconds,
        files=files.height,
        frames=int(files["frames"].sum() or 0),
        skipped=list(zip(bad["raw_key"], bad["error"], strict=True)),
    )


def cached_shard(store: DatapoolStore, shard: str, fingerprint: str) -> ShardEmbeddings | None:
    """The shard's summary when its file status and its embeddings for the model both exist (no decode
    needed), else None."""
    files = store.read_shard_files(shard)
    if files is None:
        return None
    cached = store.read_shard_embeddings(shard, fingerprint)
    if cached is None:
        return None
    return _result(shard, files, cached.height, cached=True, seconds=0.0)


@dataclass
class _Rows:
    """The embeddings table being built, one entry per embedded frame (image)."""

    image_size: int  # the model's input size (pixel_correlation's lag depends on the source's upscale)
    keys: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    durations: list[float | None] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    heights: list[int | None] = field(default_factory=list)
    sizes: list[int | None] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    stats: FrameStatsRecorder = field(default_factory=FrameStatsRecorder)

    def frame(self, key: str, version: str, index: int, stamp: float, duration: float | None,
              width: int | None, height: int | None, size: int | None) -> None:
        self.keys.append(key)
        self.versions.append(version)
        self.indices.append(index)
        self.stamps.append(stamp)
        self.durations.append(duration)
        self.widths.append(width)
        self.heights.append(height)
        self.sizes.append(size)

    def table(self, dim: int) -> pl.DataFrame:
        matrix = np.concatenate(self.chunks) if self.chunks else np.empty((0, dim), np.float32)
        return pl.DataFrame(
            {
                "raw_key": self.keys,
                "raw_version": self.versions,
                "frame_index": self.indices,
                "timestamp_s": self.stamps,
                "embedding": matrix,
                "brightness": self.stats.brightness,
                "contrast": self.stats.contrast,
                "sharpness": self.stats.sharpness,
                "pixel_correlation": [
                    pixel_correlation(c, self.image_size, w, h)
                    for c, w, h in zip(self.stats.correlations, self.widths, self.heights, strict=True)
                ],
                "duration_s": self.durations,
                "width": self.widths,
                "height": self.heights,
                "file_size": self.sizes,
            },
            schema={
                "raw_key": pl.String,
                "raw_version": pl.String,
                "frame_index": pl.Int64,
                "timestamp_s": pl.Float64,
                "embedding": pl.Array(pl.Float32, dim),
                **METADATA_SCHEMA,
            },
        )


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
    """Decode the shard's raw files once and embed every frame (image); see the module docstring.

    force: ignore the shard's file status and embeddings and decode every member again.
    """
    if not force and (hit := cached_shard(store, shard, model.fingerprint)) is not None:
        return hit
    known = None if force else store.read_shard_files(shard)
    if known is None:
        members = store.shard_members([shard])
        if members.height == 0:
            raise ValueError(f"shard {shard} is not registered in {store.storage.uri}")
        todo = members.sort("raw_key")
    else:  # file status known: embed the files that decoded
        todo = known.filter(pl.col("status") == "ok")
    embedder = _Embedder(spec, input_storage, model, shard, log, check=known is None,
                         total=None if known is None else int(todo["frames"].sum() or 0))
    statuses = embedder.run(todo)
    df = embedder.rows.table(model.dim)
    if known is None:
        files = pl.DataFrame(
            [{k: {**member, **status}.get(k) for k in tables.FILE_STATUS_SCHEMA}
             for member, status in zip(todo.iter_rows(named=True), statuses, strict=True)],
            schema=tables.FILE_STATUS_SCHEMA,
        )
        store.write_shard_files(shard, files)  # first: the embeddings' presence implies the file status
        fault_point("after_file_status")
    else:
        files = known
    store.write_shard_embeddings(shard, model.fingerprint, df)
    fault_point("after_embeddings")
    result = _result(shard, files, df.height, cached=False, seconds=embedder.throttle.elapsed)
    log(f"shard {shard}: {result.files} file(s), {result.frames} frame(s), {len(result.skipped)} skipped, "
        f"{df.height} embedded in {result.seconds:.1f}s")
    return result


class _Embedder:
    """One decode per raw file: frames into the model, statistics and status on the way."""

    def __init__(self, spec: DatasetSpec, storage: Storage, model: EmbeddingModel, shard: str, log: Log, *,
                 check: bool, total: int | None) -> None:
        self.spec = spec
        self.storage = storage
        self.model = model
        self.shard = shard
        self.log = log
        self.check = check  # first decode of the shard: check each file against the registry, record status
        self.total = total
        self.rows = _Rows(model.image_size)
        self.throttle = Throttle(log)
        self.done = 0

    def run(self, todo: pl.DataFrame) -> list[dict[str, object]]:
        """Per row of `todo` its status (when `check`; else the rows' status stands)."""
        if self.spec.type == "VIDEOS":
            return [self._video(row) for row in todo.iter_rows(named=True)]
        statuses: list[dict[str, object]] = []
        self._embed(self._images(todo, statuses), "images")
        return statuses

    def _embed(self, frames: Iterable[np.ndarray], unit: str) -> int:
        before = self.done
        for batch in self.model.embed_stream(self.rows.stats.wrap(frames)):
            self.rows.chunks.append(batch)
            self.done += len(batch)
            rate = self.done / max(self.throttle.elapsed, 1e-6)
            of = f"/{self.total}" if self.total is not None else ""
            self.throttle(f"shard {self.shard}: embedded {self.done}{of} {unit} ({rate:.1f}/s)")
        return self.done - before

    def _unreadable(self, row: dict[str, object]) -> str | None:
        """Why a registered file cannot be read as registered (checked before decoding it), or None."""
        info = self.storage.stat(str(row["raw_key"]))
        if info is None or info.version != row["raw_version"]:
            return "removed or overwritten since discovery"
        if info.size == 0:
            return "empty file"
        return None

    def _skip(self, key: str, reason: str) -> dict[str, object]:
        self.log(f"skipping {key}: {reason}")
        return {"status": "skipped", "error": reason, "frames": 0, "width": None, "height": None}

    def _video(self, row: dict[str, object]) -> dict[str, object]:
        key, version = str(row["raw_key"]), str(row["raw_version"])
        if self.check and (reason := self._unreadable(row)) is not None:
            return self._skip(key, reason)
        with self.storage.local_source(key) as source:
            stream = FrameStream(source, self.model.image_size, **self.spec.video.frame_options())
            n = self._embed(stream, "frames")
        for i in range(n):
            self.rows.frame(key, version, i, stream.timestamps[i], stream.duration, stream.width, stream.height,
                            row["raw_size"])  # type: ignore[arg-type]
        if n == 0:
            return self._skip(key, stream.error or "no video frames")
        if stream.error:
            self.log(f"{key}: {stream.error}; keeping the {n} frames decoded before it")
        return {"status": "ok", "error": stream.error, "frames": n, "width": None, "height": None}

    def _images(self, todo: pl.DataFrame, statuses: list[dict[str, object]]) -> Iterator[np.ndarray]:
        size = self.model.image_size
        for row in todo.iter_rows(named=True):
            key = str(row["raw_key"])
            if self.check and (reason := self._unreadable(row)) is not None:
                statuses.append(self._skip(key, reason))
                continue
            # A storage error fails the shard (the step retries) on the first decode; once the file status
            # says ok, a file unreadable since is left out of the embeddings (as the embedding step always did).
            tolerated = ImageDecodeError if self.check else (ImageDecodeError, OSError)
            try:
                decoded = load_image(self.storage.read_bytes(key), min_side=size,
                                     max_decoded_megabytes=self.spec.images.max_decoded_megabytes)
            except tolerated as exc:
                statuses.append(self._skip(key, str(exc)))
                continue
            width, height = (decoded.width, decoded.height) if self.check else (row["width"], row["height"])
            statuses.append({"status": "ok", "error": None, "frames": 1, "width": width, "height": height})
            self.rows.frame(key, str(row["raw_version"]), -1, 0.0, None, width, height, row["raw_size"])
            yield resize_center_crop(decoded.image, size)
