"""How often a run decodes each video (issue 12: at most twice per run): every ffmpeg decode process is
started by media/video.py `_run`, counted per source by `count_decodes()`. Real ffmpeg on generated videos,
the tiny embedder; the run is the workflow the Dagster assets chain (raw_files -> embeddings -> selection ->
tag -> report), without Dagster."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import Commit, DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding.model import EmbeddingModel
from datapool_pipeline.media.video import count_decodes, extract_frames_png
from datapool_pipeline.report import build_report, write_report
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline.workflow.discovery import assign_shards, list_inventory, plan_run, unprocessed
from datapool_pipeline.workflow.embeddings import embed_shard
from datapool_pipeline.workflow.selection import select_for_run
from datapool_pipeline_tests.helpers import add_videos, tiny_embedder

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
SAMPLE_COLUMNS = ["raw_key", "raw_version", "frame_index", "timestamp_s"]


def run(spec: DatasetSpec, n_samples: int, run_id: str, model: EmbeddingModel, minutes: int, *,
        report: bool = False) -> tuple[Commit, Counter]:
    """One whole run over the new files (the report too if asked: it takes seconds), its ffmpeg decodes
    counted per video file name."""
    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    run_config = parse_run_config({"worker_config": {"use_datapool": minutes > 0},
                                   "selection_config": {"n_samples": n_samples}})
    with count_decodes() as decodes:
        todo = unprocessed(list_inventory(spec, input_storage).files, store.load_state().processed)
        shards, _ = assign_shards(spec, store, todo)
        plan = plan_run(spec, store, input_storage, shards, process_all=False)
        for shard in shards:
            embed_shard(spec, store, input_storage, model, shard)
        summary = select_for_run(spec, store, plan, run_config, staging_id=run_id,
                                 started_at=START + timedelta(minutes=minutes), fingerprint=model.fingerprint,
                                 dim=model.dim)
        commit = commit_staged(spec, store, input_storage, summary.staging_id, run_id=run_id)
        if report:  # thumbnails of video picks come from the PNGs the commit wrote, not from the videos
            write_report(store, build_report(spec, store, commit), input_storage)
    return commit, Counter({Path(source).name: n for source, n in decodes.items()})


def test_each_selected_video_is_decoded_at_most_twice_and_every_other_once(tmp_path: Path) -> None:
    spec = DatasetSpec(name="vids", type="VIDEOS", input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                       videos_per_shard=3)
    folder = Path(spec.input)
    first = ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4"]
    add_videos(folder, first, seconds=1, fps=5)
    (folder / "broken.mp4").write_bytes((folder / "a.mp4").read_bytes()[:2000])  # truncated: skipped
    (folder / "empty.mp4").write_bytes(b"")  # skipped without decoding
    store = DatapoolStore(LocalStorage(spec.output))
    model = tiny_embedder()

    commit, decodes = run(spec, 3, "run-1", model, 0, report=True)
    selected = set(store.read_samples(commit)["raw_key"])
    assert commit.n_samples == 3 and selected <= set(first)
    assert {key: decodes[key] for key in selected} == dict.fromkeys(selected, 2)  # embed pass + the picks' PNGs
    assert {key: decodes[key] for key in set(first) - selected} == dict.fromkeys(set(first) - selected, 1)
    assert decodes["broken.mp4"] == 1 and decodes["empty.mp4"] == 0
    assert sum(decodes.values()) == len(first) + 1 + len(selected)
    processed = store.read_processed(commit)
    status = dict(zip(processed["raw_key"], processed["status"], strict=True))
    assert status["broken.mp4"] == status["empty.mp4"] == "skipped"
    assert {status[k] for k in first} == {"ok"}
    assert dict(zip(processed["raw_key"], processed["frames"], strict=True))["a.mp4"] == 5
    # No frame manifest of its own any more: the embeddings table is the manifest.
    assert not list(Path(spec.output, "datapool", "shards").rglob("frames.parquet"))

    # The next run decodes only its new videos; the processed ones are neither decoded nor selected again.
    add_videos(folder, ["f.mp4", "g.mp4"], first_source=5, seconds=1, fps=5)
    commit2, decodes2 = run(spec, 2, "run-2", model, 1)
    selected2 = set(store.read_samples(commit2)["raw_key"])
    assert selected2 <= {"f.mp4", "g.mp4"} and set(decodes2) <= {"f.mp4", "g.mp4"}
    assert all(decodes2[key] == (2 if key in selected2 else 1) for key in ("f.mp4", "g.mp4"))


def test_a_new_model_re_embeds_with_one_decode_and_the_same_sample_ids(tmp_path: Path) -> None:
    """Embeddings are cached per model: another model decodes each decodable video once more (the skipped
    ones not at all) and numbers the frames as before; the same model decodes nothing. The same path
    serves a crash between a shard's file status and its embeddings."""
    spec = DatasetSpec(name="vids", type="VIDEOS", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    folder = Path(spec.input)
    add_videos(folder, ["a.mp4", "b.mp4"], seconds=1, fps=5)
    (folder / "broken.mp4").write_bytes((folder / "a.mp4").read_bytes()[:2000])
    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    old, new = tiny_embedder(), tiny_embedder(dim=8, image_size=48, seed=3, fingerprint="another-model")
    shards, _ = assign_shards(spec, store, list_inventory(spec, input_storage).files)
    (shard,) = shards
    with count_decodes() as decodes:
        first = embed_shard(spec, store, input_storage, old, shard)
    assert not first.cached and sorted(Path(s).name for s in decodes.elements()) == ["a.mp4", "b.mp4", "broken.mp4"]
    assert (first.files, first.frames, first.samples) == (3, 10, 10)
    assert [key for key, _ in first.skipped] == ["broken.mp4"]
    files = store.read_shard_files(shard)

    with count_decodes() as decodes:
        again = embed_shard(spec, store, input_storage, old, shard)
    assert again.cached and not decodes and (again.frames, again.skipped) == (first.frames, first.skipped)

    with count_decodes() as decodes:
        other = embed_shard(spec, store, input_storage, new, shard)
    assert not other.cached and sorted(Path(s).name for s in decodes.elements()) == ["a.mp4", "b.mp4"]
    assert store.read_shard_files(shard).equals(files)  # the file status stands
    before = store.read_shard_embeddings(shard, old.fingerprint)
    after = store.read_shard_embeddings(shard, new.fingerprint)
    assert before is not None and after is not None
    assert after.select(SAMPLE_COLUMNS).equals(before.select(SAMPLE_COLUMNS))  # same frames, same sample ids
    assert after.schema["embedding"] == pl.Array(pl.Float32, 8)


def test_extracting_many_picks_of_one_video_is_one_decode(tmp_path: Path) -> None:
    """All of a video's picks come out of one ffmpeg pass (ffmpeg refused a flat select expression of more
    than 100 terms, so picks were split into passes of up to 256 and a video with 101 picks failed)."""
    add_videos(tmp_path, ["v.mp4"], seconds=30, fps=10)
    source = str(tmp_path / "v.mp4")
    wanted = [i for i in range(300) if i % 7 in (0, 1, 3)] + [299]  # scattered runs, 130 picks
    with count_decodes() as decodes:
        pngs = extract_frames_png(source, wanted)
    assert sorted(pngs) == sorted(set(wanted)) and decodes[source] == 1
    with count_decodes() as decodes:
        few = extract_frames_png(source, [3, 252])
    assert decodes[source] == 1 and few[3] == pngs[3] and few[252] == pngs[252]
