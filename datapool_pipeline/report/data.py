"""Everything a report needs about one committed tag, read back from the datapool store.

The run's *new candidates* (every sample of its processed files that was not in the datapool
before it) are rebuilt from the per-shard embedding caches, so coverage can be measured over all
of them, not only over the picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from datapool_pipeline.datapool import Commit, DatapoolState, DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec

ID_COLUMNS = ["sample_id", "raw_key", "raw_version", "frame_index", "timestamp_s"]


@dataclass
class RunData:
    commit: Commit
    samples: pl.DataFrame  # the tag's samples (with embeddings)
    processed: pl.DataFrame  # raw files the run looked at (ok and skipped)
    pool_before: pl.DataFrame  # ID_COLUMNS + tag of the datapool before the run
    pool_before_emb: np.ndarray
    candidates: pl.DataFrame  # ID_COLUMNS of the run's new samples, sorted like the selection sorts them
    candidate_emb: np.ndarray
    selected: np.ndarray  # indices into candidates of the tag's samples, in pick order
    in_pool_before: int  # samples of the run's files that were already in the datapool
    notes: list[str] = field(default_factory=list)


def collect_run_data(spec: DatasetSpec, store: DatapoolStore, commit: Commit) -> RunData:
    commits = [c for c in store.load_commits() if c.seq < commit.seq]
    before = DatapoolState(store, commits)
    dim = commit.embedding_dim
    samples = store.read_samples(commit).sort("pick_rank")
    processed = store.read_processed(commit)
    notes: list[str] = []

    pool = before.samples
    pool_emb = _pool_embeddings(spec, store, before, commit, dim, notes)
    if len(pool_emb) != pool.height:
        pool = pool.clear()
    pool_ids = pool.select([*ID_COLUMNS, "tag"])

    found = _run_embeddings(spec, store, processed, commit, dim, notes)
    in_pool = found.join(pool_ids.select("sample_id"), on="sample_id", how="semi").height
    new = (
        found.join(pool_ids.select("sample_id"), on="sample_id", how="anti")
        .unique(subset="sample_id", keep="first", maintain_order=True)
        .sort(["raw_key", "raw_version", "frame_index"])
    )
    missing = samples.join(new.select("sample_id"), on="sample_id", how="anti")
    if missing.height:  # caches gone: the picks themselves are still candidates
        new = pl.concat([new, missing.select(new.columns)], how="vertical")
    position = {s: i for i, s in enumerate(new["sample_id"].to_list())}
    selected = np.array([position[s] for s in samples["sample_id"].to_list()], dtype=np.int64)
    return RunData(
        commit=commit,
        samples=samples,
        processed=processed,
        pool_before=pool_ids,
        pool_before_emb=pool_emb if pool.height else np.empty((0, dim), np.float32),
        candidates=new.select(ID_COLUMNS),
        candidate_emb=tables.embeddings_matrix(new, dim),
        selected=selected,
        in_pool_before=in_pool,
        notes=notes,
    )


def _pool_embeddings(
    spec: DatasetSpec, store: DatapoolStore, before: DatapoolState, commit: Commit, dim: int, notes: list[str]
) -> np.ndarray:
    """The datapool's embeddings in this commit's model space, row-aligned with `before.samples`."""
    if before.size == 0:
        return np.empty((0, dim), np.float32)
    if all(c.embedding_model == commit.embedding_model for c in before.commits):
        return tables.embeddings_matrix(before.samples, dim)
    # The model changed since some samples were committed: take them from the shard caches of this model.
    keys = ["raw_key", "raw_version", "frame_index"]
    pool = before.samples.select(keys)
    shards = store.read_registry().join(pool.select(keys[:2]).unique(), on=keys[:2], how="semi")
    parts = [store.read_shard_embeddings(sh, commit.embedding_model) for sh in shards["shard_id"].unique().to_list()]
    found = [p.select([*keys, "embedding"]) for p in parts if p is not None]
    matched = (
        pool.join(pl.concat(found).unique(subset=keys), on=keys, how="inner", maintain_order="left")
        if found else pool.clear()
    )  # fmt: skip
    if matched.height < pool.height:
        notes.append(f"{pool.height - matched.height} datapool samples have no {commit.embedding_model} embedding "
                     "(the model changed): the datapool is left out of the distances and the view")
        return np.empty((0, dim), np.float32)
    return tables.embeddings_matrix(matched, dim)


def _run_embeddings(
    spec: DatasetSpec, store: DatapoolStore, processed: pl.DataFrame, commit: Commit, dim: int, notes: list[str]
) -> pl.DataFrame:
    """All samples of the run's decoded files, from the shard embedding caches, with their sample ids."""
    files = processed.filter(pl.col("status") == "ok").select(["raw_key", "raw_version"])
    shards = store.read_registry().join(files, on=["raw_key", "raw_version"], how="semi")
    parts = []
    for shard in shards["shard_id"].unique(maintain_order=True).to_list():
        df = store.read_shard_embeddings(shard, commit.embedding_model)
        if df is None:
            notes.append(f"embedding cache of shard {shard} is missing: its unselected samples are not shown")
            continue
        parts.append(df.select(["raw_key", "raw_version", "frame_index", "timestamp_s", "embedding"]))
    schema = {"raw_key": pl.String, "raw_version": pl.String, "frame_index": pl.Int64, "timestamp_s": pl.Float64,
              "embedding": pl.Array(pl.Float32, dim)}
    found = pl.concat(parts, how="vertical") if parts else pl.DataFrame(schema=schema)
    found = found.join(files, on=["raw_key", "raw_version"], how="semi")
    ids = tables.sample_ids(spec.type, found["raw_key"].to_list(), found["raw_version"].to_list(),
                            found["frame_index"].to_list())
    return found.with_columns(pl.Series("sample_id", ids, dtype=pl.String)).select([*ID_COLUMNS, "embedding"])
