"""The vendor page's full example on generated videos, through the CLI and a real Dagster instance."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import add_videos

# Slow tier: real runs through the CLI (open_clip model, Dagster instance).
pytestmark = pytest.mark.slow


def tags(cli, yaml_path: Path) -> list[tuple[str, int]]:
    result = cli("--datasets", str(yaml_path), "tags", "videos-datapool")
    assert result.code == 0, result.err
    return [(line.split()[0], int(line.split()[1])) for line in result.out.splitlines()]


def export(cli, yaml_path: Path, tag: str) -> list[str]:
    result = cli("--datasets", str(yaml_path), "export", "videos-datapool", "--tag", tag)
    assert result.code == 0, result.err
    return result.out.splitlines()


def frame_files(output: Path) -> set[str]:
    return {p.relative_to(output).as_posix() for p in (output / "frames").rglob("*.png")}


def test_vendor_full_example(cli, video_dataset, dagster_home) -> None:
    yaml_path, input_dir, output = video_dataset
    ds = ("--datasets", str(yaml_path))
    add_videos(input_dir, ["a.mov", "b.mov", "c.mov"])

    first = cli(*ds, "run", "videos-datapool", "--n-samples", "100")
    assert first.code == 0, first.err
    listed = tags(cli, yaml_path)
    assert listed[-1] == ("initial-tag", 100) and len(listed) == 2 and listed[0][1] == 100
    run1 = export(cli, yaml_path, listed[0][0])
    assert len(run1) == 100 == len(set(run1))
    assert frame_files(output) == set(run1)  # only selected frames are written, all of them

    add_videos(input_dir, ["d.mov", "e.mov"], first_source=3)
    second = cli(*ds, "run", "videos-datapool", "--use-datapool", "--n-samples", "50")
    assert second.code == 0, second.err
    listed = tags(cli, yaml_path)
    assert [n for _, n in listed] == [50, 100, 150]
    run2 = export(cli, yaml_path, listed[0][0])
    assert len(run2) == 50 and all(name.startswith(("frames/d.mov/", "frames/e.mov/")) for name in run2)
    pool = export(cli, yaml_path, "initial-tag")
    assert len(pool) == len(set(pool)) == 150 and set(pool) == set(run1) | set(run2)
    assert frame_files(output) == set(pool)

    third = cli(*ds, "run", "videos-datapool", "--use-datapool", "--n-samples", "50")
    assert third.code == 1
    assert "no new raw files" in third.err and "process_all" in third.err
    assert len(third.err.strip().splitlines()[-1]) < 400
    assert [n for _, n in tags(cli, yaml_path)] == [50, 100, 150]

    fourth = cli(*ds, "run", "videos-datapool", "--use-datapool", "--process-all", "--n-samples", "30")
    assert fourth.code == 0, fourth.err
    listed = tags(cli, yaml_path)
    assert [n for _, n in listed] == [30, 50, 100, 180]
    run4 = export(cli, yaml_path, listed[0][0])
    assert not set(run4) & set(pool)
    assert len(set(export(cli, yaml_path, "initial-tag"))) == 180

    # The tables are open formats, readable by polars, and agree with the CLI.
    store = DatapoolStore(LocalStorage(output))
    state = store.load_state()
    samples = state.samples
    assert samples["sample_id"].n_unique() == samples.height == 180
    assert samples.group_by("tag").len().sort("len")["len"].to_list() == [30, 50, 100]
    emb = samples["embedding"].to_numpy()
    assert emb.shape[1] == 384 and abs(float((emb**2).sum(axis=1).mean()) - 1) < 1e-4
    glob = pl.read_parquet(str(output / "datapool" / "samples" / "*.parquet"))
    assert glob.height == 180
    report = json.loads((output / "datapool" / "reports" / listed[0][0] / "report.json").read_text())
    assert report["datapool"] == {"size_before": 150, "size_after": 180, "samples_added": 30,
                                  "adopted_from_crashed_run": 0}

    # Every run is a Dagster run in DAGSTER_HOME; each tag is a materialization with its name and size.
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"datapool/dataset": "videos-datapool"}))
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        events = instance.fetch_materializations(dg.AssetKey(["videos_datapool", "tag"]), limit=10).records
        meta = [e.asset_materialization.metadata for e in events]
        assert sorted((m["tag"].value, m["samples"].value) for m in meta) == sorted(listed[:-1])


def test_run_progress_is_reported(cli, video_dataset) -> None:
    yaml_path, input_dir, _ = video_dataset
    add_videos(input_dir, ["a.mov"], seconds=3)
    result = cli("--datasets", str(yaml_path), "run", "videos-datapool", "--n-samples", "5")
    assert result.code == 0, result.err
    assert "1 raw file(s) to process" in result.err
    assert "tag " in result.out and "5 samples added" in result.out
