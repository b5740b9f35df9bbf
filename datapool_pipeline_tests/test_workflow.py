"""The pipeline's steps (workflow/) on local folders with the tiny deterministic embedder: discovery, decode +
embeddings, selection and commit, as the Dagster assets chain them, without Dagster or open_clip. The fast
tier's end-to-end check of the workflow and the datapool store (the slow tier runs the real thing)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import Commit, DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding.model import EmbeddingModel
from datapool_pipeline.errors import ConcurrentCommitError, RunAborted
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline.workflow.discovery import (
    assign_shards,
    check_use_datapool,
    list_inventory,
    plan_run,
    unprocessed,
)
from datapool_pipeline.workflow.embeddings import embed_shard
from datapool_pipeline.workflow.relevant import restrict_to_relevant
from datapool_pipeline.workflow.selection import SelectionSummary, select_for_run
from datapool_pipeline_tests.helpers import TINY_FINGERPRINT, add_videos, tiny_embedder

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def select_new(spec: DatasetSpec, raw_config: dict, staging_id: str, minutes: int = 0,
               model: EmbeddingModel | None = None) -> SelectionSummary:
    """raw_files (with the relevant-filenames restriction) -> embeddings -> selection of the files
    no commit processed (all with process_all), with the tiny embedder unless `model` is given."""
    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    run_config = parse_run_config(raw_config)
    files = list_inventory(spec, input_storage).files
    todo = files if run_config.process_all else unprocessed(files, store.load_state().processed)
    shards, _ = assign_shards(spec, store, todo)
    plan = plan_run(spec, store, input_storage, shards, process_all=run_config.process_all)
    plan = restrict_to_relevant(plan, run_config.selection_config, input_storage)
    embedder = model or tiny_embedder()
    for shard in shards:
        embed_shard(spec, store, input_storage, embedder, shard)
    return select_for_run(spec, store, plan, run_config, staging_id=staging_id,
                          started_at=START + timedelta(minutes=minutes), fingerprint=embedder.fingerprint,
                          dim=embedder.dim, input_storage=input_storage, query_model=lambda: embedder)


def write_images(folder: Path, count: int, start: int = 0) -> None:
    """Small PNGs of varied content (seeded noise over a per-image colour), written in milliseconds."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        colour = rng.integers(0, 256, size=3)
        pixels = np.clip(colour + rng.normal(scale=40, size=(48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")


def select(
    spec: DatasetSpec, n_samples: int, staging_id: str, *, use_datapool: bool = False, process_all: bool = False,
    minutes: int = 0,
) -> SelectionSummary:
    """raw_files -> embeddings -> selection for one run (what the asset job does up to its tag step)."""
    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    run_config = parse_run_config({
        "worker_config": {"use_datapool": use_datapool, "datasource": {"process_all": process_all}},
        "selection_config": {"n_samples": n_samples},
    })
    check_use_datapool(spec, store, use_datapool)
    files = list_inventory(spec, input_storage).files
    todo = files if process_all else unprocessed(files, store.load_state().processed)
    shards, _ = assign_shards(spec, store, todo)
    plan = plan_run(spec, store, input_storage, shards, process_all=process_all)
    model = tiny_embedder()
    for shard in shards:
        embed_shard(spec, store, input_storage, model, shard)
    return select_for_run(
        spec, store, plan, run_config, staging_id=staging_id, started_at=START + timedelta(minutes=minutes),
        fingerprint=model.fingerprint, dim=model.dim,
    )


def run(spec: DatasetSpec, n_samples: int, run_id: str, **options: object) -> Commit:
    summary = select(spec, n_samples, run_id, **options)  # type: ignore[arg-type]
    return commit_staged(spec, DatapoolStore(LocalStorage(spec.output)), LocalStorage(spec.input),
                         summary.staging_id, run_id=run_id)


def images_spec(tmp_path: Path, name: str = "imgs") -> DatasetSpec:
    return DatasetSpec(name=name, type="IMAGES", input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                       images_per_shard=4)


def test_images_grow_the_datapool_run_by_run(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    store = DatapoolStore(LocalStorage(spec.output))
    write_images(Path(spec.input), 10)

    first = run(spec, 4, "run-1")
    assert (first.tag, first.n_samples, first.datapool_size, first.n_processed) == ("2025-01-01T00-00-00Z", 4, 4, 10)
    state = store.load_state()
    assert state.tags == [first.tag] and state.samples["sample_id"].n_unique() == 4
    norms = np.linalg.norm(np.stack(state.samples["embedding"].to_numpy()), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    assert store.staging_ids() == []  # the staged selection is gone once committed

    with pytest.raises(RunAborted, match="no new raw files"):
        select(spec, 2, "run-2", use_datapool=True)
    write_images(Path(spec.input), 5, start=10)
    with pytest.raises(RunAborted, match="already holds 4 samples"):
        select(spec, 2, "run-2")

    second = run(spec, 3, "run-2", use_datapool=True, minutes=1)
    picked = store.load_state().tag_samples(second.tag)["sample_id"].to_list()
    assert second.datapool_size == 7 and len(picked) == 3
    assert all(int(key[4:7]) >= 10 for key in picked)  # only the new images were candidates

    # process_all: every image is a candidate again, but none of the datapool's.
    third = run(spec, 100, "run-3", use_datapool=True, process_all=True, minutes=2)
    state = store.load_state()
    assert third.n_samples == 8 and state.size == 15 and state.samples["sample_id"].n_unique() == 15


def test_selection_is_deterministic_and_embeddings_are_cached(tmp_path: Path) -> None:
    picks = []
    for name in ("a", "b"):
        spec = images_spec(tmp_path / name)
        write_images(Path(spec.input), 12)
        commit = run(spec, 5, "run-1")
        store = DatapoolStore(LocalStorage(spec.output))
        picks.append(store.read_samples(commit).sort("pick_rank")["sample_id"].to_list())
        for shard in store.read_registry()["shard_id"].unique().to_list():
            again = embed_shard(spec, store, LocalStorage(spec.input), tiny_embedder(), shard)
            assert again.cached and again.samples > 0
            assert store.read_shard_embeddings(shard, TINY_FINGERPRINT) is not None
    assert picks[0] == picks[1] and len(picks[0]) == 5


def test_a_selection_staged_against_an_older_datapool_is_not_committed(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    store = DatapoolStore(LocalStorage(spec.output))
    write_images(Path(spec.input), 8)
    first = select(spec, 3, "run-a")
    second = select(spec, 3, "run-b", minutes=1)  # same base: both staged against an empty datapool
    commit = commit_staged(spec, store, LocalStorage(spec.input), first.staging_id, run_id="run-a")
    assert commit.datapool_size == 3

    with pytest.raises(ConcurrentCommitError):
        commit_staged(spec, store, LocalStorage(spec.input), second.staging_id, run_id="run-b")
    assert store.load_state().size == 3 and [c.tag for c in store.load_commits()] == [commit.tag]


def test_videos_commit_their_selected_frames(tmp_path: Path) -> None:
    spec = DatasetSpec(name="vids", type="VIDEOS", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    add_videos(Path(spec.input), ["a.mp4", "b.mp4"], seconds=1, fps=5)
    (Path(spec.input) / "notes.txt").write_text("not a video")

    commit = run(spec, 4, "run-1")

    store = DatapoolStore(LocalStorage(spec.output))
    samples = store.read_samples(commit)
    assert commit.n_samples == 4 and set(samples["raw_key"].to_list()) <= {"a.mp4", "b.mp4"}
    for sample_id in samples["sample_id"].to_list():  # each pick written as a full-resolution PNG
        with Image.open(Path(spec.output) / sample_id) as png:
            assert png.format == "PNG" and png.size == (320, 240)
    processed = store.read_processed(commit)
    skipped = processed.filter(pl.col("raw_key") == "notes.txt")
    assert skipped["status"].to_list() == ["skipped"] and processed.height == 3
