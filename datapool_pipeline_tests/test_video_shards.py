"""Shards of several videos (datasets.yaml videos_per_shard, max_shard_megabytes): the grouping rule, a run
over multi-video shards with real ffmpeg videos and the tiny embedder (frames, embeddings, selection, commit,
report data), a corrupt video inside a shard, and an older datapool of one-video shards grown on top."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.launch import ScanCursor, scan_new_files
from datapool_pipeline.report.data import collect_run_data
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.discovery import assign_shards, list_inventory, shard_id, shard_starts
from datapool_pipeline.workflow.embeddings import embed_shard
from datapool_pipeline_tests.helpers import TINY_FINGERPRINT, add_videos, tiny_embedder
from datapool_pipeline_tests.test_workflow import run

MB = 2**20


def video_spec(root: Path, **options: object) -> DatasetSpec:
    return DatasetSpec(name="vids", type="VIDEOS", input=str(root / "in"), output=str(root / "out"), **options)


def shard_sizes(store: DatapoolStore) -> list[int]:
    registry = store.read_registry()
    per_shard = registry.group_by("shard_id").agg(pl.len().alias("n"), pl.col("raw_key").min().alias("first"))
    return per_shard.sort("first")["n"].to_list()


def test_shard_starts_close_at_the_count_or_the_size() -> None:
    assert shard_starts([], 2) == []
    assert shard_starts([1] * 5, 2) == [0, 2, 4]
    assert shard_starts([1] * 3, 32) == [0]  # a few new videos: one shard of what there is
    # The size cap: 3 + 3 fits in 8, a third would not; a file above the cap alone is a shard of its own.
    assert shard_starts([3, 3, 3, 20, 1, 1], 32, 8) == [0, 2, 3, 4]
    assert shard_starts([20, 20], 32, 8) == [0, 1]
    # Images: count only, the same batches as before (slices of images_per_shard).
    assert shard_starts([10**9] * 600, 256) == [0, 256, 512]


def test_defaults_keep_a_million_videos_under_dagsters_partition_limit() -> None:
    spec = video_spec(Path("/tmp/x"))
    assert spec.videos_per_shard == 32 and spec.max_shard_megabytes == 4096
    sizes = [50 * MB] * 10**6  # 50 MB videos: 32 of them (1.6 GB) fit in a shard
    assert len(shard_starts(sizes, spec.videos_per_shard, spec.max_shard_megabytes * MB)) == 31_250
    with pytest.raises(ValueError, match="videos_per_shard"):
        video_spec(Path("/tmp/x"), videos_per_shard=0)


def test_five_videos_two_per_shard_pick_the_same_frames(tmp_path: Path) -> None:
    first = video_spec(tmp_path / "one", videos_per_shard=1)
    add_videos(Path(first.input), [f"v{i}.mp4" for i in range(5)], seconds=1, fps=5)
    grouped = video_spec(tmp_path / "two", videos_per_shard=2)
    shutil.copytree(first.input, grouped.input)  # same keys, sizes and mtimes: same versions

    picks = []
    for spec, sizes in ((first, [1] * 5), (grouped, [2, 2, 1])):
        commit = run(spec, 6, "run-1")
        store = DatapoolStore(LocalStorage(spec.output))
        assert shard_sizes(store) == sizes
        assert commit.n_samples == 6 and commit.n_processed == 5
        picks.append(store.read_samples(commit).sort("pick_rank").select("raw_key", "frame_index").rows())
        data = collect_run_data(spec, store, commit)  # the report's view: every frame of every video
        assert len(data.candidates) == 25 and not data.notes
    assert picks[0] == picks[1]


def test_a_corrupt_video_is_skipped_without_failing_its_shard(tmp_path: Path) -> None:
    spec = video_spec(tmp_path)
    add_videos(Path(spec.input), ["a.mp4", "c.mp4"], seconds=1, fps=5)
    (Path(spec.input) / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 50)

    commit = run(spec, 4, "run-1")

    store = DatapoolStore(LocalStorage(spec.output))
    assert shard_sizes(store) == [3]  # one shard holds the three
    processed = store.read_processed(commit).sort("raw_key")
    assert processed["status"].to_list() == ["ok", "skipped", "ok"]
    assert processed["error"][1]
    assert set(store.read_samples(commit)["raw_key"].to_list()) <= {"a.mp4", "c.mp4"}
    assert commit.n_samples == 4


def test_an_older_datapool_of_one_video_shards_keeps_its_shards(tmp_path: Path) -> None:
    old = video_spec(tmp_path, videos_per_shard=1)  # what every datapool registered before
    add_videos(Path(old.input), ["a.mp4", "b.mp4", "c.mp4"], seconds=1, fps=5)
    run(old, 3, "run-1")
    store = DatapoolStore(LocalStorage(old.output))
    before = store.read_registry()
    assert before["shard_id"].n_unique() == 3

    spec = video_spec(tmp_path)  # today's defaults: 32 videos per shard
    add_videos(Path(spec.input), ["d.mp4", "e.mp4", "f.mp4", "g.mp4"], first_source=3, seconds=1, fps=5)
    second = run(spec, 3, "run-2", use_datapool=True, minutes=1)
    registry = store.read_registry()
    assert registry.join(before, on=list(registry.columns), how="anti")["raw_key"].sort().to_list() == [
        "d.mp4", "e.mp4", "f.mp4", "g.mp4"]
    assert shard_sizes(store) == [1, 1, 1, 4]  # the old shards as they were, the new files in one
    assert second.n_processed == 4 and store.load_state().size == 6
    assert set(store.load_state().tag_samples(second.tag)["raw_key"].to_list()) <= {"d.mp4", "e.mp4", "f.mp4", "g.mp4"}

    # Everything again: the old shards are reused as registered (and their embeddings from the cache).
    inventory = list_inventory(spec, LocalStorage(spec.input)).files
    needed, new_rows = assign_shards(spec, store, inventory)
    assert new_rows.height == 0 and sorted(needed) == sorted(registry["shard_id"].unique().to_list())
    for shard in before["shard_id"].to_list():
        assert embed_shard(spec, store, LocalStorage(spec.input), tiny_embedder(), shard).cached
        assert store.read_shard_embeddings(shard, TINY_FINGERPRINT) is not None
    third = run(spec, 100, "run-3", use_datapool=True, process_all=True, minutes=2)
    assert third.n_processed == 7 and store.read_registry().height == 7


def test_the_sensor_and_datapool_run_make_the_same_shards(tmp_path: Path) -> None:
    """scan_new_files (sensors) and assign_shards (datapool run, the UI launch) share the grouping rule;
    shard ids and run keys follow from the files' keys and versions. Listing only: the files are not decoded."""
    cli, sensor = video_spec(tmp_path / "cli", videos_per_shard=2), video_spec(tmp_path / "sensor", videos_per_shard=2)
    Path(cli.input).mkdir(parents=True)
    for i in range(5):
        (Path(cli.input) / f"v{i}.mp4").write_bytes(b"x" * (i + 1))
    shutil.copytree(cli.input, sensor.input)

    files = list_inventory(cli, LocalStorage(cli.input)).files
    needed, _ = assign_shards(cli, DatapoolStore(LocalStorage(cli.output)), files)
    scan = scan_new_files(sensor, DatapoolStore(LocalStorage(sensor.output)), LocalStorage(sensor.input), [],
                          ScanCursor())
    assert sorted(scan.new_partitions) == sorted(needed) and len(needed) == 3
    expected = shard_id("VIDEOS", list(zip(files["raw_key"][:2], files["raw_version"][:2], strict=True)))
    assert expected in needed
    again = scan_new_files(sensor, DatapoolStore(LocalStorage(tmp_path / "other")), LocalStorage(sensor.input), [],
                           ScanCursor())
    assert [b.run_key for b in again.batches] == [b.run_key for b in scan.batches]
    assert tables.REGISTRY_SCHEMA.keys() == DatapoolStore(LocalStorage(sensor.output)).read_registry().schema.keys()


def test_the_sensor_holds_a_partly_filled_shard_back_until_it_fills_or_waited(tmp_path: Path) -> None:
    """sensor.shard_wait_seconds: a trickle of new videos fills shards instead of making one per tick."""
    spec = video_spec(tmp_path, videos_per_shard=3, sensor={"shard_wait_seconds": 600})
    folder = Path(spec.input)
    folder.mkdir(parents=True)
    store, storage = DatapoolStore(LocalStorage(spec.output)), LocalStorage(spec.input)
    partitions: list[str] = []

    def tick(cursor: ScanCursor, now: float, *names: str):  # noqa: ANN202
        for name in names:
            (folder / name).write_bytes(b"x" * 10)
        scan = scan_new_files(spec, store, storage, partitions, ScanCursor.parse(cursor.serialize()), now=now)
        partitions.extend(scan.new_partitions)
        return scan

    first = tick(ScanCursor(), 0, "a.mp4", "b.mp4")
    assert (first.batches, first.held, first.cursor.pending_since) == ([], 2, 0)
    assert store.read_registry().height == 0  # held in the cursor only
    second = tick(first.cursor, 60, "c.mp4", "d.mp4")  # a shard of 3 fills; d waits, held since 60
    assert [b.files for b in second.batches] == [3] and second.held == 1 and second.cursor.pending_since == 60
    assert shard_sizes(store) == [3]
    third = tick(second.cursor, 600, "e.mp4")  # d and e: still short of 3, d held for 540 s so far
    assert third.batches == [] and third.held == 2 and third.cursor.pending_since == 60
    fourth = tick(third.cursor, 660)  # 600 s since d was held: the partly filled shard goes ahead
    assert [b.files for b in fourth.batches] == [2] and fourth.held == 0 and not fourth.cursor.pending
    assert shard_sizes(store) == [3, 2] and len(partitions) == 2
    assert json.loads(fourth.cursor.serialize()).keys() == {"v", "after", "passes", "sweep", "ticks"}
    # Without the setting (default 0), every tick's new files are requested at once.
    assert video_spec(tmp_path).sensor.shard_wait_seconds == 0


def test_datapool_run_adds_many_partitions_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_run adds a first run's partitions a slice at a time (10^6 keys in one call exceed SQLite's
    SQL variables); the run's range still covers them in order."""
    import dagster as dg

    from datapool_pipeline import launch
    from datapool_pipeline.config import parse_run_config

    spec = video_spec(tmp_path, videos_per_shard=1)
    Path(spec.input).mkdir(parents=True)
    for i in range(5):
        (Path(spec.input) / f"v{i}.mp4").write_bytes(b"x")
    calls: list[int] = []
    monkeypatch.setattr(launch, "ADD_PARTITIONS_PER_CALL", 2)
    with dg.instance_for_test() as instance:
        original = instance.add_dynamic_partitions
        monkeypatch.setattr(instance, "add_dynamic_partitions",
                            lambda name, keys: (calls.append(len(keys)), original(name, keys))[1])
        prepared = launch.prepare_run(spec, instance, parse_run_config({"selection_config": {"n_samples": 1}}))
        assert calls == [2, 2, 1] and prepared.files == 5
        assert instance.get_dynamic_partitions(launch.partitions_name(spec)) == prepared.shards
        assert (prepared.range_start, prepared.range_end) == (prepared.shards[0], prepared.shards[-1])
