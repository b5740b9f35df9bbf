"""The per-dataset sensor against a real temporary Dagster instance (build_sensor_context)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import load_datasets
from datapool_pipeline.definitions import build_definitions
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage import open_storage
from datapool_pipeline_tests.helpers import add_videos, tiny_embedder, write_datasets_yaml

SENSOR = "videos_datapool_new_files"
MIN_DISTANCE = 0.1
PARTITIONS = "videos_datapool__shards"


def _sensor_yaml(tmp_path: Path, dataset_extra: str = "", **settings: object) -> tuple[Path, Path, Path]:
    input_dir, output_dir = tmp_path / "input", tmp_path / "lightly"
    input_dir.mkdir()
    lines = "".join(f"      {k}: {json.dumps(v)}\n" for k, v in settings.items())
    extra = f"{dataset_extra}    sensor:\n      enabled: true\n{lines}      selection_config: {{n_samples: 5}}\n"
    path = write_datasets_yaml(
        tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir), str(output_dir), extra=extra
    )
    return path, input_dir, output_dir


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _tick(path: Path, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    defs = build_definitions(str(path))
    sensor = defs.resolve_sensor_def(SENSOR)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> list[str]:
    """What the daemon does with a tick's result: add the requested partitions."""
    added: list[str] = []
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        added.extend(request.partition_keys)
    return added


@pytest.fixture
def memory_instance() -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance with in-memory storage: a tenth of instance_for_test's setup time."""
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs executed in this process embed with the tiny deterministic embedder (helpers.py) instead of
    open_clip, under the dataset's model fingerprint (so the caches are where the steps look)."""
    from datapool_pipeline.assets import factory

    monkeypatch.setattr(factory, "load_model", lambda spec: tiny_embedder(fingerprint=spec.fingerprint))


def run_request(
    path: Path, instance: dg.DagsterInstance, request: dg.RunRequest, job: str
) -> dg.ExecuteInProcessResult:
    """What the daemon does with a run request, in this process: the job with the request's run config and
    tags, every step but the report (built from the committed tag; its own tests cover it)."""
    defs = build_definitions(str(path))
    keys = [k for k in defs.resolve_all_asset_keys() if k.path[-1] != "report"]
    result = defs.resolve_job_def(request.job_name or job).execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, asset_selection=keys,
        raise_on_error=False,
    )
    failures = [e.message for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    return result


def selection_metadata(instance: dg.DagsterInstance, prefix: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(dg.AssetKey([prefix, "selection"]))
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _range(request: dg.RunRequest) -> tuple[str, str]:
    return request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]


def test_new_files_then_nothing_then_overwrite(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    # full_listing_every_ticks: 1 -> a full pass every other tick; one video per shard (as datapools
    # registered before videos_per_shard), so that 3 videos make 3 shards batched 2 + 1.
    path, input_dir, output_dir = _sensor_yaml(tmp_path, "    videos_per_shard: 1\n", files_per_run=2,
                                               full_listing_every_ticks=1)
    add_videos(input_dir, ["a.mp4", "b.mp4", "c.mp4"], seconds=1)
    (input_dir / "notes.txt").write_text("not a video")

    first = _tick(path, instance, None)
    added = _apply(instance, first)
    assert len(added) == 3 and instance.get_dynamic_partitions(PARTITIONS) == added
    # One run per batch of 2 files, each over a contiguous range of the new partitions.
    assert [_range(r) for r in first.run_requests] == [(added[0], added[1]), (added[2], added[2])]
    assert [r.tags["datapool/files"] for r in first.run_requests] == ["2", "1"]
    config = first.run_requests[0].run_config["ops"]["videos_datapool__raw_files"]["config"]
    assert config["selection_config"]["n_samples"] == 5 and config["worker_config"]["use_datapool"] is True
    assert all(r.tags["datapool/dataset"] == "videos-datapool" for r in first.run_requests)
    registry = DatapoolStore(open_storage(str(output_dir))).read_registry()
    assert sorted(registry["raw_key"].to_list()) == ["a.mp4", "b.mp4", "c.mp4"]

    again = _tick(path, instance, first.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert "no new videos" in str(again.skip_reason)

    # Overwrite b.mp4 with other content: new version -> new shard -> a new run for that file only. The key
    # sorts before the cursor, so the full pass finds it (here the next tick; by default within 60 ticks).
    add_videos(input_dir, ["b.mp4"], first_source=3, seconds=1)
    os.utime(input_dir / "b.mp4", ns=(1, 1))
    third = _tick(path, instance, again.cursor)
    new = _apply(instance, third)
    assert len(new) == 1 and new[0] not in added and new[0].startswith("v-b-mp4-")
    assert [_range(r) for r in third.run_requests] == [(new[0], new[0])]
    assert third.run_requests[0].run_key not in {r.run_key for r in first.run_requests}


def test_cursor_bounds_listing_and_survives(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    path, input_dir, _ = _sensor_yaml(tmp_path, max_objects_per_tick=2, files_per_run=10)
    add_videos(input_dir, ["a.mp4", "b.mp4", "c.mp4"], seconds=1)

    first = _tick(path, instance, None)
    assert json.loads(first.cursor or "") == {"v": 2, "after": "b.mp4", "passes": 0, "sweep": None, "ticks": 0}
    _apply(instance, first)
    assert len(first.run_requests) == 1 and first.run_requests[0].tags["datapool/files"] == "2"

    # A fresh context (as after a daemon restart) resumes from the stored cursor: only c.mp4 is left.
    second = _tick(path, instance, first.cursor)
    assert [k for r in second.dynamic_partitions_requests for k in r.partition_keys][0].startswith("v-c-mp4-")
    assert json.loads(second.cursor or "") == {"v": 2, "after": "c.mp4", "passes": 1, "sweep": None, "ticks": 0}
    _apply(instance, second)

    # The next tick lists only what follows c.mp4 (nothing), instead of starting over.
    third = _tick(path, instance, second.cursor)
    assert not third.run_requests and "listed 0 object(s) after 'c.mp4'" in str(third.skip_reason)
    assert json.loads(third.cursor or "")["after"] == "c.mp4"


def test_registered_but_unrequested_shards_are_requested_again(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """A tick that died after writing the registry (no partitions, no runs) loses nothing."""
    path, input_dir, _ = _sensor_yaml(tmp_path)
    add_videos(input_dir, ["a.mp4"], seconds=1)
    lost = _tick(path, instance, None)  # result dropped: the daemon never applied it
    retry = _tick(path, instance, None)
    assert [r.run_key for r in retry.run_requests] == [r.run_key for r in lost.run_requests]
    assert _apply(instance, retry) == list(lost.dynamic_partitions_requests[0].partition_keys)


def test_sensor_settings_are_validated(tmp_path: Path) -> None:
    path, _, _ = _sensor_yaml(tmp_path)
    spec = load_datasets(path)["videos-datapool"]
    assert spec.sensor.enabled and spec.sensor.minimum_interval_seconds == 60
    text = path.read_text()
    path.write_text(text.replace("n_samples: 5", "n_samples: 0"))
    with pytest.raises(ConfigError, match=r"datasets.videos-datapool.sensor.selection_config.n_samples"):
        load_datasets(path)
    process_all = "enabled: true\n      worker_config: {datasource: {process_all: true}}"
    path.write_text(text.replace("enabled: true", process_all))
    with pytest.raises(ConfigError, match="sensor.worker_config.datasource.process_all"):
        load_datasets(path)
    path.write_text(text.replace("enabled: true", "enabled: true\n      files_per_run: 0"))
    with pytest.raises(ConfigError, match="sensor.files_per_run: must be a positive integer"):
        load_datasets(path)


def test_cursor_follows_the_listing_order_of_nested_folders(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """A local folder lists in key order, as object stores do (sub/a.mp4 before z.mp4): the cursor
    skips neither."""
    path, input_dir, _ = _sensor_yaml(tmp_path, max_objects_per_tick=1)
    (input_dir / "sub").mkdir()
    add_videos(input_dir, ["z.mp4"], seconds=1)
    add_videos(input_dir / "sub", ["a.mp4"], seconds=1)
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        result = _tick(path, instance, cursor)
        seen += [k.split("-")[1] for k in _apply(instance, result)]
        cursor = result.cursor
    assert seen == ["sub", "z"]


# ---- relevant filenames in the sensor's run config; a sensor-started run with a strategy mix ---------------------


def _listed(output_dir: Path) -> list[str]:
    return sorted(DatapoolStore(open_storage(str(output_dir))).read_registry()["raw_key"].to_list())


def test_relevant_filenames_register_only_listed_files_and_a_changed_list_finds_the_rest(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    """Unlisted new files are never registered (so no run decodes them) nor claimed: when the list changes,
    or the sensor's run config drops it, the next tick makes a full pass and finds them."""
    instance = memory_instance
    path, input_dir, output_dir = _sensor_yaml(tmp_path)
    original = path.read_text()
    path.write_text(original.replace("{n_samples: 5}", "{n_samples: 5, relevant_filenames_file: relevant.txt}"))
    add_videos(input_dir, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], seconds=0.3)
    (input_dir / "relevant.txt").write_text("a.mp4\nc.mp4\n")

    first = _tick(path, instance, None)
    _apply(instance, first)
    assert _listed(output_dir) == ["a.mp4", "c.mp4"]  # one shard of the two listed videos, not of all four
    assert [r.tags["datapool/files"] for r in first.run_requests] == ["2"]
    config = first.run_requests[0].run_config["ops"]["videos_datapool__raw_files"]["config"]
    assert config["selection_config"]["relevant_filenames_file"] == "relevant.txt"
    add_videos(input_dir, ["z.mp4"], seconds=0.3)  # after the cursor (relevant.txt): listed by the next tick
    second = _tick(path, instance, first.cursor)
    assert not second.run_requests
    assert "1 new file(s) not among the relevant filenames of the sensor's run config" in str(second.skip_reason)

    (input_dir / "relevant.txt").write_text("a.mp4\nb.mp4\nc.mp4\n")  # b.mp4 sorts before the cursor
    third = _tick(path, instance, second.cursor)  # the list changed: a full pass at once
    _apply(instance, third)
    assert _listed(output_dir) == ["a.mp4", "b.mp4", "c.mp4"] and len(third.run_requests) == 1
    fourth = _tick(path, instance, third.cursor)  # the same list: incremental again
    assert not fourth.run_requests and "listed 0 object(s) after 'z.mp4'" in str(fourth.skip_reason)

    path.write_text(original)  # no restriction any more: d.mp4 and z.mp4 are found at once, not within 60 ticks
    fifth = _tick(path, instance, fourth.cursor)
    _apply(instance, fifth)
    assert _listed(output_dir) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "z.mp4"]
    assert [r.tags["datapool/files"] for r in fifth.run_requests] == ["2"]


def test_a_sensor_started_run_with_a_strategy_mix_on_videos(
    tmp_path: Path, memory_instance: dg.DagsterInstance, tiny_model: None
) -> None:
    """The sensor's run config carries DIVERSITY with a minimum distance, TYPICALITY and a THRESHOLD on the
    built-in brightness; its run request runs the job on real videos (tiny embedder): no pick breaks the
    threshold, and the Dagster metadata of `selection` shows what the minimum distance and the threshold did.
    (TYPICALITY has no entry there; the report states its strength.)"""
    instance = memory_instance
    path, input_dir, output_dir = _sensor_yaml(tmp_path)
    strategies = [
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": MIN_DISTANCE}},
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 1.0}},
        {"input": {"type": "METADATA", "key": "brightness"},
         "strategy": {"type": "THRESHOLD", "threshold": 50, "operation": "BIGGER"}},
    ]
    path.write_text(path.read_text().replace(
        "{n_samples: 5}", json.dumps({"n_samples": 20, "strategies": strategies})))
    # testsrc2, mandelbrot and life (a dark video: brightness about 15): 10 frames each.
    add_videos(input_dir, ["a.mp4", "b.mp4", "c.mp4"], seconds=1)

    tick = _tick(path, instance, None)
    _apply(instance, tick)
    assert len(tick.run_requests) == 1
    run_request(path, instance, tick.run_requests[0], "videos_datapool_datapool")

    meta = selection_metadata(instance, "videos_datapool")
    assert meta["threshold_removed"] == 10 and meta["new_candidates"] == 20  # c.mp4's dark frames: none is a candidate
    assert meta["requested"] == 20 and meta["stop_reason"] == "minimum_distance"
    assert str(meta["typicality_density"]).startswith("picks mean ")  # TYPICALITY's effect, in short
    assert 2 <= meta["selected"] < 20  # type: ignore[operator]
    state = DatapoolStore(open_storage(str(output_dir))).load_state()
    assert state.size == meta["selected"] and "c.mp4" not in state.samples["raw_key"].to_list()
    assert state.commits[-1].config["selection_config"]["strategies"][2]["strategy"]["operation"] == "BIGGER"


def test_the_sensor_accepts_every_strategy_and_requests_runs_with_them(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    instance = memory_instance
    path, input_dir, _ = _sensor_yaml(tmp_path, "    metadata: {file: labels.csv}\n")
    every = [
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 0.2}},
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}},
        {"input": {"type": "EMBEDDINGS", "text": ["a dark street at night"]}, "strategy": {"type": "SIMILARITY"}},
        {"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS"}},
        {"input": {"type": "SCORES", "key": "score"},
         "strategy": {"type": "THRESHOLD", "threshold": 0.3, "operation": "BIGGER_EQUAL"}},
        {"input": {"type": "PREDICTIONS", "key": "weather"},
         "strategy": {"type": "BALANCE", "target": {"sunny": 0.5, "rain": 0.5}}},
    ]
    path.write_text(path.read_text().replace("{n_samples: 5}", json.dumps({"n_samples": 5, "strategies": every})))
    add_videos(input_dir, ["a.mp4"], seconds=0.3)
    (request,) = _tick(path, instance, None).run_requests
    config = request.run_config["ops"]["videos_datapool__raw_files"]["config"]
    assert [e["strategy"]["type"] for e in config["selection_config"]["strategies"]] == [
        "DIVERSITY", "TYPICALITY", "SIMILARITY", "WEIGHTS", "THRESHOLD", "BALANCE"]
    # The run config the sensor requests passes the job's typed config (what the daemon checks at launch).
    job = build_definitions(str(path)).resolve_job_def("videos_datapool_datapool")
    assert dg.validate_run_config(job, request.run_config)["ops"]["videos_datapool__raw_files"]["config"][
        "selection_config"]["strategies"][5]["strategy"]["target"] == {"sunny": 0.5, "rain": 0.5}
