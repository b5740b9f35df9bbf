"""Dagster metadata built from the datapool's tables: tables the UI renders, and the column schema."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote

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


OBJECT_SCHEMES = ("s3://", "gs://", "az://")


def file_entries(name: str, uri: str, env_prefix: str = "",
                 env: Mapping[str, str] | None = None) -> dict[str, dg.MetadataValue]:
    """Metadata naming one output file. A local file is a path. An object is its full URI as text (the
    UI would render an s3:// "link" that no browser opens), plus `<name>_url`: an https address a browser
    can open (AWS / Google Cloud console, Azure blob URL) when there is one, i.e. not for a custom
    endpoint (MinIO, an emulator). `env_prefix` is the datasource's credentials prefix (datasets.yaml)."""
    if not uri.startswith(OBJECT_SCHEMES):
        return {name: dg.MetadataValue.path(uri)}
    entries: dict[str, dg.MetadataValue] = {name: dg.MetadataValue.text(uri)}
    url = browser_url(uri, env_prefix, os.environ if env is None else env)
    if url:
        entries[f"{name}_url"] = dg.MetadataValue.url(url)
    return entries


def browser_url(uri: str, env_prefix: str, env: Mapping[str, str]) -> str | None:
    """The https address of an s3://, gs:// or az:// object that a browser opens (after signing in to the
    console; an Azure blob URL opens for public containers or with a SAS), or None."""

    def var(*names: str) -> str:
        return next((v.strip() for n in names for p in (env_prefix, "") if (v := env.get(p + n, "")).strip()), "")

    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if uri.startswith("s3://"):
        if var("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            return None
        region = var("AWS_REGION", "AWS_DEFAULT_REGION")
        return (f"https://s3.console.aws.amazon.com/s3/object/{quote(bucket)}?"
                + (f"region={quote(region)}&" if region else "") + f"prefix={quote(key, safe='')}")
    if uri.startswith("gs://"):
        if var("STORAGE_EMULATOR_HOST"):
            return None
        return f"https://console.cloud.google.com/storage/browser/_details/{quote(bucket)}/{quote(key)}"
    account_url = var("AZURE_STORAGE_ACCOUNT_URL")
    if not account_url:
        parts = dict(p.split("=", 1) for p in var("AZURE_STORAGE_CONNECTION_STRING").split(";") if "=" in p)
        account = parts.get("AccountName") or var("AZURE_STORAGE_ACCOUNT")
        account_url = parts.get("BlobEndpoint") or (f"https://{account}.blob.core.windows.net" if account else "")
    if not account_url.startswith("https://"):
        return None  # Azurite or no account known
    return f"{account_url.rstrip('/')}/{quote(bucket)}/{quote(key)}"
