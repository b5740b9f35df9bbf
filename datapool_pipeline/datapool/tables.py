"""Parquet table schemas and (de)serialisation helpers shared by the store and the workflow."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import polars as pl

# Identity of a raw file version: (raw_key, raw_version). raw_version is the etag, or size+mtime.
FILE_COLUMNS = {"raw_key": pl.String, "raw_version": pl.String, "raw_size": pl.Int64, "media_type": pl.String}

REGISTRY_SCHEMA = {"shard_id": pl.String, **FILE_COLUMNS}

# One row per raw file a committed run looked at (including skipped ones).
PROCESSED_SCHEMA = {**FILE_COLUMNS, "status": pl.String, "error": pl.String, "frames": pl.Int64, "tag": pl.String}

# Per-shard decode status, one row per raw file of the shard (workflow/embeddings.py).
FILE_STATUS_SCHEMA = {
    **FILE_COLUMNS,
    "status": pl.String,  # "ok" | "skipped"
    "error": pl.String,
    "frames": pl.Int64,
    "width": pl.Int64,
    "height": pl.Int64,
}

# Built-in metadata columns of the per-shard embeddings table (selection/metadata.py), computed in the
# embedding pass. Shards embedded before they existed are read with them null.
EMBEDDING_METADATA_SCHEMA: dict[str, pl.DataType] = {
    "brightness": pl.Float32(),
    "contrast": pl.Float32(),
    "sharpness": pl.Float32(),
    "pixel_correlation": pl.Float32(),
    "duration_s": pl.Float64(),
    "width": pl.Int64(),
    "height": pl.Int64(),
    "file_size": pl.Int64(),
}


def with_embedding_metadata(df: pl.DataFrame) -> pl.DataFrame:
    """An embeddings table with every built-in metadata column (null where an older shard lacks it)."""
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in EMBEDDING_METADATA_SCHEMA.items()
               if name not in df.columns]
    return df.with_columns(missing) if missing else df


def sample_schema(dim: int) -> dict[str, pl.DataType]:
    return {
        "sample_id": pl.String,  # = filename: the frame image in the output, or the image's input key
        "raw_key": pl.String,
        "raw_version": pl.String,
        "frame_index": pl.Int64,  # -1 for images
        "timestamp_s": pl.Float64,
        "tag": pl.String,
        "pick_rank": pl.Int64,
        "pick_distance": pl.Float32,  # distance to nearest datapool-or-earlier sample when picked
        "pool_distance": pl.Float32,  # distance to nearest sample of the datapool before the run
        "embedding": pl.Array(pl.Float32, dim),
    }


def version_hash(version: str) -> str:
    return hashlib.sha1(version.encode()).hexdigest()[:8]


def frame_filename(raw_key: str, raw_version: str, frame_index: int) -> str:
    """Where a selected video frame is written in the output datasource (one PNG per frame)."""
    return f"frames/{raw_key}/{version_hash(raw_version)}-{frame_index:06d}.png"


def sample_ids(media_type: str, raw_keys: list[str], versions: list[str], frames: list[int]) -> list[str]:
    if media_type == "IMAGES":
        return list(raw_keys)
    return [frame_filename(k, v, f) for k, v, f in zip(raw_keys, versions, frames, strict=True)]


def to_parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def from_parquet(data: bytes) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(data))


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def embeddings_matrix(df: pl.DataFrame, dim: int) -> np.ndarray:
    if df.height == 0:
        return np.empty((0, dim), dtype=np.float32)
    return np.ascontiguousarray(df["embedding"].to_numpy(), dtype=np.float32)
