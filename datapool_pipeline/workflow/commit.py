"""Commit a staged selection: write selected frames, then the tag's tables and manifest atomically.

Order matters for crash safety: frames are uploaded first (deterministic names, idempotent), the
commit manifest is the single atomic last write, and clean-up of other runs' leftovers comes after.
"""

from __future__ import annotations

import polars as pl

from datapool_pipeline.datapool import Commit, DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import ConcurrentCommitError
from datapool_pipeline.media.video import extract_frames_png
from datapool_pipeline.selection.record import commit_record
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow.faults import FAULT_ENV, fault_point
from datapool_pipeline.workflow.progress import Log, Throttle, no_log

__all__ = ["FAULT_ENV", "commit_staged", "upload_frames", "clean_up"]


def commit_staged(
    spec: DatasetSpec,
    store: DatapoolStore,
    input_storage: Storage,
    staging_id: str,
    *,
    run_id: str,
    log: Log = no_log,
) -> Commit:
    store.check_owner(spec.name, spec.type, claim=False)  # last line of defence against mixing
    commits = store.load_commits()
    for commit in commits:
        if commit.staging_id == staging_id:
            log(f"tag {commit.tag} of this selection was already committed; finishing its clean-up")
            clean_up(spec, store, keep=set())
            return commit
    staged = store.read_staging(staging_id)
    if staged is None:
        raise ConcurrentCommitError(
            "this run's staged selection was discarded because another run committed first; "
            "start a new run to select against the updated datapool"
        )
    meta, picks, processed = staged
    state = store.load_state()
    if state.head_seq != meta["base_seq"]:
        raise ConcurrentCommitError(
            f"the datapool changed since this run selected (tag {state.tags[-1]} was committed by "
            "another run); nothing was committed: start a new run to select against it"
        )
    if spec.type == "VIDEOS":
        upload_frames(spec, store, input_storage, picks, log)
    fault_point("after_upload")
    try:
        commit = store.commit(
            state,
            tag=meta["tag"],
            run_id=run_id,
            staging_id=staging_id,
            samples=picks,
            processed=processed,
            dataset_type=spec.type,
            embedding_model=meta["embedding_model"],
            embedding_dim=meta["embedding_dim"],
            config=meta["config"],
            adopted=meta.get("adopted", 0),
            selection=commit_record(meta),
        )
    except ConcurrentCommitError:
        # Lost the race at the last moment: remove this run's uploads that the winner does not hold.
        pool_ids = set(store.load_state().samples["sample_id"].to_list())
        if spec.type == "VIDEOS":
            for sample_id in picks["sample_id"].to_list():
                if sample_id not in pool_ids:
                    store.storage.delete(sample_id)
        store.delete_staging(staging_id)
        raise
    log(f"committed tag {commit.tag}: {commit.n_samples} samples, datapool now {commit.datapool_size}")
    fault_point("after_commit")
    clean_up(spec, store, keep=set())
    return commit


def upload_frames(
    spec: DatasetSpec, store: DatapoolStore, input_storage: Storage, picks: pl.DataFrame, log: Log
) -> None:
    """Write each selected frame as a full-resolution PNG, videos in pick order: one ffmpeg pass per video, or
    a seek per pick where that is cheaper and provably the same frame (media/video.py extract_frames_png; the
    picks' recorded timestamps are what proves it)."""
    output = store.storage
    todo = picks.filter(~pl.col("sample_id").map_elements(output.exists, return_dtype=pl.Boolean))
    throttle = Throttle(log)
    done = picks.height - todo.height
    if done:
        log(f"{done} selected frame(s) were already uploaded by an earlier attempt")
    order = todo.group_by(["raw_key", "raw_version"], maintain_order=True).agg(
        pl.col("frame_index"), pl.col("timestamp_s"), pl.col("sample_id"), pl.col("pick_rank").min().alias("first")
    ).sort("first")
    for row in order.iter_rows(named=True):
        with input_storage.local_source(row["raw_key"]) as source:
            stamps = {i: t for i, t in zip(row["frame_index"], row["timestamp_s"], strict=True) if t is not None}
            pngs = extract_frames_png(source, row["frame_index"], timestamps=stamps, **spec.video.frame_options())
        for index, sample_id in zip(row["frame_index"], row["sample_id"], strict=True):
            output.write_bytes(sample_id, pngs[index])
            done += 1
            if done == picks.height // 2:
                fault_point("mid_upload")
            throttle(f"uploaded {done}/{picks.height} selected frames")
    throttle(f"uploaded {done}/{picks.height} selected frames", final=True)


def clean_up(spec: DatasetSpec, store: DatapoolStore, keep: set[str]) -> None:
    """Remove what crashed or beaten runs left: staged selections, their uploads that are not in
    the datapool, and table parts no commit references."""
    state = store.load_state()
    committed = {c.staging_id for c in state.commits}
    pool_ids: set[str] | None = None  # read only for a selection that was not committed (every samples part)
    for sid in store.staging_ids():
        if sid in keep:
            continue
        # A committed selection's uploads are its tag's samples: all in the datapool, nothing to delete.
        entry = store.read_staging(sid) if sid not in committed and spec.type == "VIDEOS" else None
        if entry is not None:
            if pool_ids is None:
                pool_ids = set(state.samples["sample_id"].to_list())
            for sample_id in entry[1]["sample_id"].to_list():
                if sample_id not in pool_ids:
                    store.storage.delete(sample_id)
        store.delete_staging(sid)
    store.remove_unreferenced_parts(state.commits)
