"""Real runs of the datapool job in this process (a real temporary Dagster instance, the tiny embedder,
no report step), started the way a user with only the UI starts them: the launch job with its typed
config (the launchpad's), then the run its sensor requests.

- Relevant filenames restrict the files before they are grouped into shards: unlisted files are never
  decoded (each shard's decode status lists the files it decoded), stay unregistered and unprocessed, and a
  later run without the restriction processes them, without decoding the listed ones again.
- BALANCE on videos counts the datapool: a datapool of `day` frames makes the run pick `night` frames.

The sensor-started run with a strategy mix is in test_sensor.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.definitions import build_definitions
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.dagster.test_sensor import run_request, selection_metadata, tiny_model  # noqa: F401
from datapool_pipeline_tests.helpers import add_images, add_videos, write_datasets_yaml

DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}


@pytest.fixture
def instance() -> Any:
    with dg.DagsterInstance.ephemeral() as inst:  # in-memory storage: fast to set up
        yield inst


def launch(path: Path, instance: dg.DagsterInstance, prefix: str, config: dict[str, Any]) -> dg.ExecuteInProcessResult:
    """A launch from the UI: the launch job with run config only (typed config, as the launchpad checks it),
    then the datapool run its sensor requests. Returns the launch job's result when it failed."""
    defs = build_definitions(str(path))
    launched = defs.resolve_job_def(f"{prefix}_launch").execute_in_process(
        run_config={"ops": {f"{prefix}__find_new_files": {"config": config}}}, instance=instance,
        raise_on_error=False,
    )
    if not launched.success:
        return launched
    sensor = defs.resolve_sensor_def(f"{prefix}_launched_runs")
    tick = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    assert isinstance(tick, dg.SensorResult)
    (request,) = [r for r in tick.run_requests if r.tags["datapool/launched_by"] == launched.run_id]
    return run_request(path, instance, request, f"{prefix}_datapool")


def decoded_files(output: Path) -> pl.DataFrame:
    """Every raw file any shard decoded (one row per file and shard: its decode status)."""
    parts = [pl.read_parquet(p) for p in sorted((output / "datapool" / "shards").glob("*/files.parquet"))]
    return pl.concat(parts) if parts else pl.DataFrame({"raw_key": []}, schema={"raw_key": pl.String})


def test_relevant_videos_are_decoded_alone_the_rest_later_and_balance_counts_the_datapool(
    tmp_path: Path, instance: dg.DagsterInstance, tiny_model: None  # noqa: F811
) -> None:
    input_dir, output = tmp_path / "input", tmp_path / "lightly"
    path = write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir), str(output),
                               extra="    metadata: {file: labels.csv}\n")
    add_videos(input_dir, ["a.mp4", "b.mp4", "c.mp4"], seconds=1)  # 10 frames each
    # The night clip: 3 s of colour bars whose hue turns 120 degrees, so that its frames are not near-copies of
    # each other and BALANCE can pick three of them (a pick must pass strategies.NOVELTY_FLOOR; a 1-second
    # clip of a black-and-white source, whose hue cannot turn, has no third frame that does).
    add_videos(input_dir, ["d.mp4"], first_source=4, seconds=3)
    (input_dir / "labels.csv").write_text("raw_key,light\na.mp4,day\nb.mp4,day\nc.mp4,day\nd.mp4,night\n")
    store = DatapoolStore(LocalStorage(output))

    # Run 1, restricted to a.mp4 and b.mp4: without the restriction all four would make one shard (32 a shard).
    launch(path, instance, "videos_datapool", {"selection_config": {
        "n_samples": 4, "relevant_filenames": ["a.mp4", "b.mp4", "elsewhere.mp4"]}})
    assert sorted(decoded_files(output)["raw_key"].to_list()) == ["a.mp4", "b.mp4"]  # c and d never decoded
    assert sorted(store.read_registry()["raw_key"].to_list()) == ["a.mp4", "b.mp4"]
    state = store.load_state()
    assert sorted(state.processed["raw_key"].to_list()) == ["a.mp4", "b.mp4"]
    assert state.size == 4 and set(state.samples["raw_key"].to_list()) <= {"a.mp4", "b.mp4"}

    # Run 2, unrestricted: it finds c.mp4 and d.mp4 (left unprocessed), decodes them alone, and BALANCE counts
    # the datapool's 4 day frames: every pick is a night frame (d.mp4), though c.mp4 is new and day too.
    balance = {"input": {"type": "PREDICTIONS", "key": "light"},
               "strategy": {"type": "BALANCE", "target": {"day": 0.5, "night": 0.5}}}
    launch(path, instance, "videos_datapool", {"worker_config": {"use_datapool": True}, "selection_config": {
        "n_samples": 3, "strategies": [DIVERSITY, balance]}})
    decoded = decoded_files(output)["raw_key"].to_list()
    assert sorted(decoded) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]  # each decoded once
    state = store.load_state()
    assert sorted(state.processed.filter(pl.col("status") == "ok")["raw_key"]) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    picks = state.tag_samples(state.tags[-1])
    assert picks["raw_key"].to_list() == ["d.mp4"] * 3
    meta = selection_metadata(instance, "videos_datapool")
    assert meta["datapool_before"] == 4
    assert meta["balance_light"] == "day 57% (target 50%), night 43% (target 50%)"  # 4 day + 3 night


def test_relevant_images_alone_are_decoded_and_a_missing_list_fails_the_launch(
    tmp_path: Path, instance: dg.DagsterInstance, tiny_model: None  # noqa: F811
) -> None:
    input_dir, output = tmp_path / "input", tmp_path / "lightly"
    path = write_datasets_yaml(tmp_path / "datasets.yaml", "imgs", "IMAGES", str(input_dir), str(output))
    add_images(input_dir, 6)  # img_0000.jpg .. img_0005.png, one shard of six without the restriction
    config = {"selection_config": {"n_samples": 5, "relevant_filenames_file": "lists/relevant.txt"}}

    failed = launch(path, instance, "imgs", config)  # the list is read before any shard is registered
    assert not failed.success
    failure = next(e for e in failed.all_events if e.is_step_failure)
    assert "selection_config.relevant_filenames_file: lists/relevant.txt is not in the input datasource" in str(
        failure.step_failure_data.error)
    assert DatapoolStore(LocalStorage(output)).read_registry().height == 0

    (input_dir / "lists").mkdir()
    (input_dir / "lists" / "relevant.txt").write_text("# two of six\nimg_0001.png\nimg_0004.jpg\n")
    launch(path, instance, "imgs", config)
    assert sorted(decoded_files(output)["raw_key"].to_list()) == ["img_0001.png", "img_0004.jpg"]
    state = DatapoolStore(LocalStorage(output)).load_state()
    assert sorted(state.samples["raw_key"].to_list()) == ["img_0001.png", "img_0004.jpg"]


def test_relevant_filenames_in_prepare_run_abort_before_registering_and_name_shared_shards(tmp_path: Path) -> None:
    """No run: what `datapool run` and a UI launch do before the run. Nothing listed among the new files aborts
    with nothing registered; a listed file registered before in a shard with unlisted ones (that shard not
    embedded yet) is decoded with it, and the log says so."""
    from datapool_pipeline.config import parse_run_config
    from datapool_pipeline.datasets import load_datasets
    from datapool_pipeline.errors import RunAborted
    from datapool_pipeline.launch import prepare_run

    input_dir, output = tmp_path / "input", tmp_path / "lightly"
    path = write_datasets_yaml(tmp_path / "datasets.yaml", "imgs", "IMAGES", str(input_dir), str(output))
    spec = load_datasets(path)["imgs"]
    add_images(input_dir, 4)
    store = DatapoolStore(LocalStorage(output))
    with dg.DagsterInstance.ephemeral() as eph:
        with pytest.raises(RunAborted, match=r"^nothing to select: none of the 4 candidate raw file\(s\) of this run "
                                             r"is among the 1 relevant filename\(s\)$"):
            prepare_run(spec, eph, parse_run_config({"selection_config": {"n_samples": 1,
                                                                           "relevant_filenames": ["other.png"]}}))
        assert store.read_registry().height == 0

        everything = prepare_run(spec, eph, parse_run_config({"selection_config": {"n_samples": 1}}))
        lines: list[str] = []
        restricted = prepare_run(spec, eph, parse_run_config(
            {"selection_config": {"n_samples": 1, "relevant_filenames": ["img_0002.jpg"]}}), log=lines.append)
        assert restricted.shards == everything.shards and restricted.files == 1
        assert any("3 other file(s) ('img_0000.jpg', 'img_0001.png', 'img_0003.png') were registered before in the "
                   "same shard(s) as listed ones" in line for line in lines), lines
