"""report.json: what came in, what was selected, and how far the new samples are from the pool."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl

from datapool_pipeline.datapool import Commit, DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec


def _stats(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0, "min": None, "mean": None, "median": None, "max": None}
    return {
        "count": int(values.size),
        "min": float(values.min()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def build_report(
    spec: DatasetSpec, store: DatapoolStore, commit: Commit, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    samples = tables.from_parquet(store.storage.read_bytes(commit.samples_file))
    processed = tables.from_parquet(store.storage.read_bytes(commit.processed_file))
    ok = processed.filter(pl.col("status") == "ok")
    skipped = processed.filter(pl.col("status") != "ok")
    per_file = (
        samples.group_by("raw_key").agg(pl.len().alias("selected")).sort("raw_key")
        if samples.height
        else pl.DataFrame(schema={"raw_key": pl.String, "selected": pl.UInt32})
    )
    files = ok.select(["raw_key", "frames"]).join(per_file, on="raw_key", how="left").with_columns(
        pl.col("selected").fill_null(0)
    ).sort("raw_key")
    report: dict[str, Any] = {
        "format": 1,
        "dataset": spec.name,
        "dataset_type": spec.type,
        "tag": commit.tag,
        "run_id": commit.run_id,
        "created_at": commit.created_at,
        "embedding_model": commit.embedding_model,
        "config": commit.config,
        "datapool": {
            "size_before": commit.datapool_size - commit.n_samples,
            "size_after": commit.datapool_size,
            "samples_added": commit.n_samples,
            "adopted_from_crashed_run": commit.adopted,
        },
        "input": {
            "raw_files_processed": ok.height,
            "raw_files_skipped": skipped.height,
            "frames_or_images": int(ok["frames"].sum() or 0),
            "skipped": [
                {"key": k, "reason": r} for k, r in zip(skipped["raw_key"], skipped["error"], strict=True)
            ],
        },
        "per_file": [
            {"key": k, "frames": int(f), "selected": int(s)}
            for k, f, s in zip(files["raw_key"], files["frames"], files["selected"], strict=True)
        ],
        "distances": {
            "to_datapool_before": _stats(samples["pool_distance"].to_numpy().astype(np.float64)),
            "at_pick": _stats(samples["pick_distance"].to_numpy().astype(np.float64)),
        },
    }
    if extra:
        report.update(extra)
    return report


def write_report(store: DatapoolStore, report: dict[str, Any]) -> dict[str, str]:
    """Write the report files under the tag's report prefix; returns their keys."""
    prefix = store.report_prefix(report["tag"])
    key = f"{prefix}/report.json"
    store.storage.write_bytes(key, json.dumps(report, indent=2, sort_keys=False).encode())
    return {"report.json": key}
