"""report.json, the single source of a tag's report: what came in, what was selected, what it bought.

`build_report` computes the numbers and the 2D embedding projection; `write_report` writes
report.json plus the files drawn from it (embedding_2d.parquet, embedding_view.html, report.pdf).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from datapool_pipeline.datapool import Commit, DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.report import metrics
from datapool_pipeline.report.data import RunData, collect_run_data
from datapool_pipeline.report.projection import pca_2d
from datapool_pipeline.report.strategies import strategies_section
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow.progress import Log, no_log

FORMAT = 2
THUMBNAILS = 20
FILES = {
    "json": "report.json",
    "pdf": "report.pdf",
    "html": "embedding_view.html",
    "points": "embedding_2d.parquet",
}
COVERAGE_DEFINITION = (
    "for every new candidate sample of the run, the distance to its nearest sample among the "
    "datapool before the run plus the selection; max = the worst-covered candidate, mean = average"
)


@dataclass
class Report:
    body: dict[str, Any]  # report.json
    points: pl.DataFrame  # the 2D embedding view, one row per point (embedding_2d.parquet)

    @property
    def tag(self) -> str:
        return str(self.body["tag"])


def _redact(text: str | None) -> str:
    """Drop query strings from URLs (signed URLs carry credentials there)."""
    return re.sub(r"(\w+://[^\s?]+)\?\S*", r"\1?<redacted>", text or "")


def build_report(
    spec: DatasetSpec, store: DatapoolStore, commit: Commit, extra: dict[str, Any] | None = None
) -> Report:
    data = collect_run_data(spec, store, commit)
    body: dict[str, Any] = {
        "format": FORMAT,
        "dataset": spec.name,
        "dataset_type": spec.type,
        "tag": commit.tag,
        "run_id": commit.run_id,
        "created_at": commit.created_at,
        "embedding_model": commit.embedding_model,
        "embedding_dim": commit.embedding_dim,
        "config": commit.config,
        "timings": None,
        "datapool": {
            "size_before": commit.datapool_size - commit.n_samples,
            "size_after": commit.datapool_size,
            "samples_added": commit.n_samples,
            "adopted_from_crashed_run": commit.adopted,
        },
        "input": _input_section(data),
        "inputs": _inputs_section(spec, data),
        "strategies": strategies_section(commit.config, getattr(commit, "selection", None) or {}, data.samples,
                                         lambda key: _pick_values(store, data, key)),
        "per_file": _per_file(data, spec.type),
        **_distance_sections(data, seed=spec.seed),
        "thumbnails": _thumbnails(data, spec.type),
        "files": {name: f"{store.report_prefix(commit.tag)}/{file}" for name, file in FILES.items()},
        "notes": data.notes,
    }
    points, projection = _points(data)
    body["embedding_2d"] = projection
    if extra:
        body.update(extra)
    return Report(body, points)


def _pick_values(store: DatapoolStore, data: RunData, key: str) -> np.ndarray | None:
    """A built-in metadata key's values of the tag's samples, read from their shards' embedding caches."""
    from datapool_pipeline.selection import metadata

    if key not in metadata.BUILTIN_COLUMNS or not data.samples.height:
        return None
    ids = ["raw_key", "raw_version", "frame_index"]
    shards = store.read_registry().join(data.samples.select(ids[:2]).unique(), on=ids[:2], how="semi")
    parts = [store.read_shard_embeddings(sh, data.commit.embedding_model) for sh in shards["shard_id"].unique()]
    found = [tables.with_embedding_metadata(p).drop("embedding") for p in parts if p is not None]
    if not found:
        return None
    rows = data.samples.select(ids).join(pl.concat(found, how="diagonal_relaxed").unique(subset=ids), on=ids,
                                         how="left", maintain_order="left")
    return metadata.column_values(rows, key)


def _input_section(data: RunData) -> dict[str, Any]:
    processed = data.processed
    ok = processed.filter(pl.col("status") == "ok")
    skipped = processed.filter(pl.col("status") != "ok").sort("raw_key")
    return {
        "raw_files_processed": ok.height,
        "videos": ok.filter(pl.col("media_type") == "VIDEOS").height,
        "images": ok.filter(pl.col("media_type") == "IMAGES").height,
        "frames_decoded": int(ok["frames"].sum() or 0),
        "new_candidates": data.candidates.height,
        "already_in_datapool": data.in_pool_before,
        "raw_files_skipped": skipped.height,
        "skipped": [
            {"key": k, "reason": _redact(r)} for k, r in zip(skipped["raw_key"], skipped["error"], strict=True)
        ],
    }


def _inputs_section(spec: DatasetSpec, data: RunData) -> list[dict[str, Any]]:
    """Per input of the dataset: where it is, its files this run, and its samples picked / in the datapool."""
    def counts(keys: list[str]) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for key in keys:
            name = spec.input_of(key).name
            out[name] = out.get(name, 0) + 1
        return out

    ok = data.processed.filter(pl.col("status") == "ok")["raw_key"].to_list()
    files, picked = counts(ok), counts(data.samples["raw_key"].to_list())
    return [
        {"name": e.name or "", "location": e.uri, "raw_files_processed": files.get(e.name, 0),
         "samples_added": picked.get(e.name, 0)}
        for e in spec.inputs
    ]


def _per_file(data: RunData, dataset_type: str) -> list[dict[str, Any]]:
    ok = data.processed.filter(pl.col("status") == "ok").select(["raw_key", "raw_version", "frames"])
    cand = data.candidates.group_by(["raw_key", "raw_version"]).agg(
        pl.len().alias("candidates"), pl.col("timestamp_s").max().alias("duration_s")
    )
    picks = data.samples.sort("frame_index").group_by(["raw_key", "raw_version"], maintain_order=True).agg(
        pl.len().alias("selected"), pl.col("frame_index").alias("frames_picked"), pl.col("timestamp_s").alias("times")
    )
    rows = (
        ok.join(cand, on=["raw_key", "raw_version"], how="left")
        .join(picks, on=["raw_key", "raw_version"], how="left")
        .sort("raw_key")
    )
    out = []
    for r in rows.iter_rows(named=True):
        entry: dict[str, Any] = {
            "key": r["raw_key"],
            "frames": int(r["frames"] or 0),
            "candidates": int(r["candidates"] or 0),
            "selected": int(r["selected"] or 0),
        }
        if dataset_type == "VIDEOS":
            entry["duration_s"] = round(float(r["duration_s"] or 0.0), 3)
            entry["selected_frames"] = [int(f) for f in r["frames_picked"] or []]
            entry["selected_times_s"] = [round(float(t), 3) for t in r["times"] or []]
        out.append(entry)
    return out


def _distance_sections(data: RunData, *, seed: int) -> dict[str, Any]:
    cand, pool, ours = data.candidate_emb, data.pool_before_emb, data.selected
    rng = np.random.default_rng(seed)
    random = np.sort(rng.choice(len(cand), size=len(ours), replace=False)) if len(cand) else ours
    cov_ours = metrics.coverage_distances(cand, pool, ours)
    cov_random = metrics.coverage_distances(cand, pool, random)
    pick = data.samples["pick_distance"].to_numpy().astype(np.float64)
    return {
        "distances": {
            "definition": "Euclidean distance between L2-normalised embeddings (0 = identical, 2 = opposite)",
            "to_datapool_before": metrics.comparison(
                metrics.nearest_distance(cand[ours], pool), metrics.nearest_distance(cand[random], pool)
            ),
            "nearest_in_tag": metrics.comparison(
                metrics.nearest_within(cand[ours]), metrics.nearest_within(cand[random])
            ),
            "at_pick": metrics.stats(pick),
        },
        "coverage": {
            "definition": COVERAGE_DEFINITION,
            "candidates": len(cand),
            "selected": len(ours),
            "random_seed": seed,
            "ours": {"max": _max(cov_ours), "mean": _mean(cov_ours)},
            "random": {"max": _max(cov_random), "mean": _mean(cov_random)},
            "distances": metrics.comparison(cov_ours, cov_random),
        },
    }


def _max(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _thumbnails(data: RunData, dataset_type: str) -> list[dict[str, Any]]:
    """The first picks (the most diverse ones): where their image is and what to call it."""
    first = data.samples.sort("pick_rank").head(THUMBNAILS)
    source = "output" if dataset_type == "VIDEOS" else "input"
    return [
        {"key": s if source == "output" else k, "source": source, "raw_key": k, "frame_index": int(f)}
        for s, k, f in zip(first["sample_id"], first["raw_key"], first["frame_index"], strict=True)
    ]


def _points(data: RunData) -> tuple[pl.DataFrame, dict[str, Any]]:
    picked = np.zeros(len(data.candidates), dtype=bool)
    picked[data.selected] = True
    unpicked = np.flatnonzero(~picked)
    groups = [
        ("previous", data.pool_before.select(["sample_id", "raw_key", "frame_index", "tag"]), data.pool_before_emb),
        ("this_run", data.candidates[data.selected].select(["sample_id", "raw_key", "frame_index"]).with_columns(
            pl.lit(data.commit.tag).alias("tag")), data.candidate_emb[data.selected]),
        ("candidate", data.candidates[unpicked].select(["sample_id", "raw_key", "frame_index"]).with_columns(
            pl.lit(None, dtype=pl.String).alias("tag")), data.candidate_emb[unpicked]),
    ]
    ids = pl.concat([g.with_columns(pl.lit(name).alias("group")) for name, g, _ in groups], how="vertical")
    emb = np.concatenate([e for _, _, e in groups]) if ids.height else np.empty((0, 2), np.float32)
    proj = pca_2d(emb)
    points = ids.with_columns(pl.Series("x", proj.coords[:, 0]), pl.Series("y", proj.coords[:, 1]))
    info = {
        "method": "pca",
        "fitted_on": proj.fitted_on,
        "explained_variance_ratio": [round(v, 6) for v in proj.explained_variance_ratio],
        "points": {name: g.height for name, g, _ in groups},
        "file": FILES["points"],
    }
    return points, info


def write_report(
    store: DatapoolStore,
    report: Report,
    input_storage: Storage | None = None,
    *,
    log: Log = no_log,
    warn: Log = no_log,
    browser: str | None = None,
) -> dict[str, str]:
    """Write embedding_2d.parquet, embedding_view.html, report.pdf, then report.json; returns their keys.

    Figures need Chromium (kaleido); without it the PDF carries a note instead and `warn` is called.
    """
    from datapool_pipeline.report.html_view import embedding_view_html
    from datapool_pipeline.report.pdf import render_pdf

    files = report.body["files"]
    store.storage.write_bytes(files["points"], tables.to_parquet(report.points))
    store.storage.write_bytes(files["html"], embedding_view_html(report.body, report.points).encode())
    pdf = render_pdf(report.body, report.points, _image_reader(store.storage, input_storage), warn=warn,
                     browser=browser)
    store.storage.write_bytes(files["pdf"], pdf)
    # report.json last: when it exists, the whole report does.
    store.storage.write_bytes(files["json"], json.dumps(report.body, indent=2, allow_nan=False).encode())
    log(f"report written to {store.storage.display(store.report_prefix(report.tag))}/")
    return {name: files[name] for name in ("json", "pdf", "html", "points")}


def _image_reader(output: Storage, input_storage: Storage | None):  # noqa: ANN202
    def read(thumb: dict[str, Any]) -> bytes | None:
        storage = output if thumb["source"] == "output" else input_storage
        if storage is None:
            return None
        try:
            return storage.read_bytes(thumb["key"])
        except Exception:  # noqa: BLE001 - a missing or unreadable image is shown as a gap, not fatal
            return None

    return read
