"""Dagster metadata built from the datapool's tables: tables the UI renders, and the column schema."""

from __future__ import annotations

import dagster as dg
import polars as pl

_TYPES = {pl.String: "string", pl.Int64: "int", pl.Float32: "float", pl.Float64: "float"}
MAX_ROWS = 25


def table(df: pl.DataFrame, limit: int = MAX_ROWS) -> dg.TableMetadataValue:
    """The first `limit` rows of a small frame (no list/array columns) as a UI table."""
    head = df.head(limit)
    columns = [dg.TableColumn(name, _TYPES.get(dtype, "string")) for name, dtype in head.schema.items()]
    records = [dg.TableRecord({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
               for row in head.iter_rows(named=True)]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def column_schema(schema: dict[str, pl.DataType], descriptions: dict[str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, _TYPES.get(dtype, str(dtype)), description=descriptions.get(name, ""))
            for name, dtype in schema.items()
        ]
    )


SAMPLE_COLUMNS = {
    "sample_id": "the exported filename: the frame image in the output (videos) or the image's input key",
    "raw_key": "key of the raw file in the input",
    "raw_version": "etag (or size + mtime) of the raw file when processed",
    "frame_index": "frame of the video (-1 for images)",
    "timestamp_s": "frame time in the video, seconds",
    "tag": "the tag that selected the sample",
    "pick_rank": "order of selection within the tag",
    "pick_distance": "distance to the nearest datapool-or-earlier pick when picked",
    "pool_distance": "distance to the nearest datapool sample before the run",
    "embedding": "L2-normalised open_clip embedding",
}
