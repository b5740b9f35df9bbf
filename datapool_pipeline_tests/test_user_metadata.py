"""The user metadata / scores / predictions table (datasets.yaml metadata.file) and BALANCE: config errors,
numpy units of the BALANCE term, and real runs with the tiny embedder on a Parquet / CSV / JSON lines table
in the input folder (BALANCE counting the datapool, table errors naming field and file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DatasetSpec, parse_datasets
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.selection import greedy_k_center, strategies
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline_tests.test_strategies import clustered
from datapool_pipeline_tests.test_workflow import select_new, write_images

DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}
BALANCE = {"input": {"type": "PREDICTIONS", "key": "weather"},
           "strategy": {"type": "BALANCE", "target": {"sunny": 0.5, "rain": 0.5}}}


def spec_with_table(tmp_path: Path, file: str | None = "meta/labels.parquet") -> DatasetSpec:
    body: dict[str, Any] = {"type": "IMAGES", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                            "images_per_shard": 4}
    if file is not None:
        body["metadata"] = {"file": file}
    return parse_datasets({"datasets": {"imgs": body}}, tmp_path)["imgs"]


def write_table(spec: DatasetSpec, frame: pl.DataFrame) -> None:
    assert spec.metadata is not None
    path = Path(spec.input) / spec.metadata.file
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.metadata.format == "parquet":
        frame.write_parquet(path)
    elif spec.metadata.format == "csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)


# ---- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": {"type": "SCORES", "key": "brightness"}, "strategy": {"type": "WEIGHTS"}},
         "strategies[1].input.key: 'brightness' is a built-in metadata key, not a column of the metadata table"),
        ({"input": {"type": "PREDICTIONS", "key": "weather"}, "strategy": {"type": "WEIGHTS"}},
         "strategies[1].input.type: WEIGHTS needs a METADATA or SCORES input with a key, not PREDICTIONS"),
        ({"input": {"type": "SCORES", "key": "score"}, "strategy": {"type": "BALANCE", "target": {"a": 1.0}}},
         "strategies[1].input.type: BALANCE needs a METADATA or PREDICTIONS input with a key, not SCORES"),
        ({"input": {"type": "METADATA", "key": "weather"}, "strategy": {"type": "BALANCE"}},
         "strategies[1].strategy.target: BALANCE needs target"),
        ({"input": {"type": "METADATA", "key": "weather"},
          "strategy": {"type": "BALANCE", "target": {"sunny": 0.7, "rain": 0.5}}},
         "strategies[1].strategy.target: the shares sum to 1.2; they must sum to at most 1"),
        ({"input": {"type": "METADATA", "key": "weather"}, "strategy": {"type": "BALANCE", "target": {"sunny": -1}}},
         "strategies[1].strategy.target.sunny: a share is between 0 and 1, got -1.0"),
        ({"input": {"type": "METADATA", "key": "width"}, "strategy": {"type": "BALANCE", "target": {"96": 1.0}}},
         "strategies[1].input.key: BALANCE needs a categorical column of the metadata table; width is a built-in"),
        ({"input": {"type": "METADATA", "key": "weather"}, "strategy": {"type": "WEIGHTS", "target": {"a": 1.0}}},
         "strategies[1].strategy.target: only BALANCE takes it, not WEIGHTS"),
        ({"input": {"type": "SCORES", "key": "raw_key"}, "strategy": {"type": "WEIGHTS"}},
         "strategies[1].input.key: 'raw_key' identifies the samples of the metadata table"),
        ({"input": {"type": "PREDICTIONS", "key": "weather"}, "strategy": {"type": "TYPICALITY"}},
         "strategies[1].input.type: PREDICTIONS is an input of BALANCE, not of TYPICALITY"),
    ],
)
def test_wrong_table_and_balance_configs_name_the_field(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, entry]}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_balance_config_round_trips_and_the_launchpad_accepts_it() -> None:
    raw = {"selection_config": {"n_samples": 2, "strategies": [DIVERSITY, BALANCE]}}
    config = parse_run_config(raw)
    assert parse_run_config(config.to_dict()) == config
    assert config.selection_config.metadata_entries("BALANCE")[0].strategy.target == {"sunny": 0.5, "rain": 0.5}
    from datapool_pipeline.assets.run_config import DatapoolRunConfig

    assert DatapoolRunConfig(**raw).parsed() == config
    # Through Dagster's own config system (the launch job's typed config): target is a map of numbers.
    import dagster as dg

    from datapool_pipeline.definitions import build_definitions

    datasets = Path(__file__).resolve().parents[1] / "datasets.yaml"
    job = build_definitions(str(datasets)).resolve_job_def("videos_datapool_launch")
    op = "videos_datapool__find_new_files"
    assert dg.validate_run_config(job, {"ops": {op: {"config": raw}}})
    bad = {"selection_config": {"n_samples": 2, "strategies": [
        DIVERSITY, {**BALANCE, "strategy": {"type": "BALANCE", "target": {"sunny": "half"}}}]}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="half"):
        dg.validate_run_config(job, {"ops": {op: {"config": bad}}})
    with pytest.raises(ConfigError, match=r"datasets\.imgs\.metadata\.file: name a \.parquet, .* not labels\.xlsx$"):
        parse_datasets({"datasets": {"imgs": {"type": "IMAGES", "input": "/a", "output": "/b",
                                              "metadata": {"file": "labels.xlsx"}}}}, Path("/"))


# ---- numpy units ----------------------------------------------------------------------------------------


def _term(codes: np.ndarray, pool_counts: list[int], strength: float = 1.0) -> strategies.BalanceTerm:
    return strategies.BalanceTerm("weather", ["sunny", "rain"], codes, np.array([0.5, 0.5]),
                                  np.array(pool_counts, np.int64), strength, 2)


def test_balance_bonus_favours_the_category_furthest_under_target() -> None:
    codes = np.array([0, 1, -1, 1])
    assert _term(codes, [10, 0]).bonus(np.zeros(2, np.int64)).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert _term(codes, [0, 0], strength=2).bonus(np.zeros(2, np.int64)).tolist() == [2.0, 2.0, 0.0, 2.0]
    assert _term(codes, [5, 5]).bonus(np.zeros(2, np.int64)).tolist() == [0.0] * 4  # at target: no bonus
    assert _term(codes, [3, 1]).bonus(np.array([0, 2])).tolist() == [0.0] * 4  # picks fill rain up to 3:3


def test_balance_counts_the_pool_and_moves_the_picks_toward_the_target() -> None:
    x, labels = clustered(n=300, outliers=0)
    weather = np.where(labels == 0, 1, 0)  # cluster 0 is rain (about a quarter), the rest sunny
    config = parse_run_config({"selection_config": {"n_samples": 20, "strategies": [DIVERSITY, BALANCE]}})
    selection = config.selection_config
    pool, cand, cand_codes = x[:40], x[40:], weather[40:]
    pool_rain = int(weather[:40].sum())
    # A datapool full of sunny samples (40 sunny counted, whatever its embeddings): the first picks are rain.
    term = _term(cand_codes, [40, 0])
    out = strategies.select(cand, 20, selection, pool=pool, balance=[term])
    assert cand_codes[out.result.picks[:5]].tolist() == [1] * 5
    plain = greedy_k_center(cand, 20, pool=pool)
    rain_plain, rain_balanced = int(cand_codes[plain.picks].sum()), int(cand_codes[out.result.picks].sum())
    assert rain_balanced > rain_plain and rain_balanced == 20  # 40 sunny in the pool: every pick is rain
    # A pool already at target: the picks split about evenly, the datapool + picks stay near 50/50.
    even = strategies.select(cand, 20, selection, pool=pool, balance=[_term(cand_codes, [20, 20])])
    rain = int(cand_codes[even.result.picks].sum())
    assert 9 <= rain <= 11 and pool_rain >= 0
    with pytest.raises(ValueError, match="BalanceTerm"):
        strategies.select(cand, 20, selection, pool=pool)


# ---- real runs ---------------------------------------------------------------------------------------------


def test_balance_counts_the_datapool_a_pool_of_sunny_makes_the_run_pick_rain_first(tmp_path: Path) -> None:
    spec = spec_with_table(tmp_path)
    store = DatapoolStore(LocalStorage(spec.output))
    write_images(Path(spec.input), 4)
    labels = {f"img_{i:03d}.png": "sunny" for i in range(4)}
    labels |= {"img_004.png": "sunny", "img_005.png": "sunny", "img_006.png": "rain", "img_007.png": "rain"}
    write_table(spec, pl.DataFrame({"raw_key": list(labels), "weather": list(labels.values())}))
    # Run 1: the four sunny images become the datapool (BALANCE on an empty pool: any picks).
    first = select_new(spec, {"selection_config": {"n_samples": 4, "strategies": [DIVERSITY, BALANCE]}}, "r1", 0)
    assert first.selected == 4 and first.balance is not None
    assert first.balance[0]["achieved"] == {"sunny": 1.0, "rain": 0.0}
    commit_staged(spec, store, LocalStorage(spec.input), "r1", run_id="r1")
    # Run 2: two sunny and two rain new images; the datapool holds 4 sunny, so both picks are rain.
    write_images(Path(spec.input), 4, start=4)
    config = {"worker_config": {"use_datapool": True},
              "selection_config": {"n_samples": 2, "strategies": [DIVERSITY, BALANCE]}}
    second = select_new(spec, config, "r2", 1)
    meta, picks, _ = store.read_staging("r2")  # type: ignore[misc]
    assert picks.sort("pick_rank")["raw_key"].to_list()[0] in ("img_006.png", "img_007.png")
    assert sorted(picks["raw_key"]) == ["img_006.png", "img_007.png"]
    assert second.balance == meta["balance"]
    summary = second.balance[0]  # type: ignore[index]
    assert summary["target"] == {"sunny": 0.5, "rain": 0.5}
    assert summary["pool"] == {"sunny": 4, "rain": 0} and summary["picks"] == {"sunny": 0, "rain": 2}
    assert summary["before"] == {"sunny": 1.0, "rain": 0.0}
    assert summary["achieved"] == {"sunny": round(4 / 6, 4), "rain": round(2 / 6, 4)}
    assert summary["short"] == "sunny 67% (target 50%), rain 33% (target 50%)"  # the Dagster metadata's value
    # The commit keeps it, and the run report shows achieved vs target.
    from datapool_pipeline.report.build import build_report

    commit = commit_staged(spec, store, LocalStorage(spec.input), "r2", run_id="r2")
    entry = build_report(spec, store, commit).body["strategies"]["entries"][1]
    assert entry["result"]["achieved"] == summary["achieved"] and entry["result"]["pool"] == {"sunny": 4, "rain": 0}


def test_scores_from_a_csv_table_drive_threshold_and_weights(tmp_path: Path) -> None:
    spec = spec_with_table(tmp_path, "scores.csv")
    store = DatapoolStore(LocalStorage(spec.output))
    write_images(Path(spec.input), 8)
    scores = {f"img_{i:03d}.png": i / 10 for i in range(8)}
    write_table(spec, pl.DataFrame({"raw_key": list(scores), "score": list(scores.values())}))
    threshold = {"input": {"type": "SCORES", "key": "score"},
                 "strategy": {"type": "THRESHOLD", "threshold": 0.45, "operation": "BIGGER"}}
    weights = {"input": {"type": "SCORES", "key": "score"}, "strategy": {"type": "WEIGHTS", "strength": 10}}
    summary = select_new(spec, {"selection_config": {"n_samples": 8, "strategies": [DIVERSITY, threshold]}}, "s1", 0)
    assert (summary.threshold_removed, summary.selected) == (5, 3)
    _, picks, _ = store.read_staging("s1")  # type: ignore[misc]
    assert sorted(picks["raw_key"]) == ["img_005.png", "img_006.png", "img_007.png"]
    store.delete_staging("s1")
    select_new(spec, {"selection_config": {"n_samples": 1, "strategies": [DIVERSITY, weights]}}, "s2", 1)
    _, picks, _ = store.read_staging("s2")  # type: ignore[misc]
    # An empty pool makes every candidate's diversity equal at the first pick: the highest score wins.
    assert picks["raw_key"].to_list() == ["img_007.png"]


@pytest.mark.parametrize(
    ("file", "frame", "entry", "message"),
    [
        ("meta/labels.parquet", None, BALANCE,
         "datasets.imgs.metadata.file: meta/labels.parquet is not in the input datasource"),
        ("meta/labels.parquet", {"raw_key": ["img_000.png"], "sky": ["blue"]}, BALANCE,
         "selection_config.strategies[1].input.key: column 'weather' is not in meta/labels.parquet (its value "
         "columns: sky)"),
        ("labels.csv", {"raw_key": ["img_000.png"], "weather": ["rain"]},
         {"input": {"type": "SCORES", "key": "weather"}, "strategy": {"type": "WEIGHTS"}},
         "selection_config.strategies[1].input.key: column 'weather' of labels.csv holds String, but WEIGHTS needs "
         "numbers"),
        ("labels.jsonl", {"raw_key": ["img_000.png"], "weather": [0.5]}, BALANCE,
         "selection_config.strategies[1].input.key: column 'weather' of labels.jsonl holds Float64, but BALANCE "
         "needs categories"),
        ("labels.jsonl", {"raw_key": ["img_000.png"], "weather": ["rain"], "brightness": [3.0]}, BALANCE,
         "datasets.imgs.metadata.file: labels.jsonl: column brightness clashes with the built-in metadata key "
         "brightness"),
        ("labels.parquet", {"key": ["img_000.png"], "weather": ["rain"]}, BALANCE,
         "datasets.imgs.metadata.file: labels.parquet has no raw_key column"),
        ("labels.parquet", {"raw_key": ["img_000.png", "img_000.png"], "weather": ["rain", "sunny"]}, BALANCE,
         "datasets.imgs.metadata.file: labels.parquet has more than one row for raw_key of img_000.png"),
        (None, None, BALANCE,
         "selection_config.strategies[1].input.key: 'weather' is not a built-in metadata key and dataset imgs has "
         "no metadata table"),
    ],
)
def test_table_errors_name_the_field_and_the_file_before_any_selection(
    tmp_path: Path, file: str | None, frame: dict | None, entry: dict, message: str
) -> None:
    spec = spec_with_table(tmp_path, file)
    write_images(Path(spec.input), 2)
    if frame is not None:
        write_table(spec, pl.DataFrame(frame))
    with pytest.raises(ConfigError) as info:
        select_new(spec, {"selection_config": {"n_samples": 1, "strategies": [DIVERSITY, entry]}}, "e1", 0)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert DatapoolStore(LocalStorage(spec.output)).staging_ids() == []


def test_an_unreadable_table_is_a_one_line_error(tmp_path: Path) -> None:
    spec = spec_with_table(tmp_path, "labels.parquet")
    write_images(Path(spec.input), 2)
    (Path(spec.input) / "labels.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match=r"^datasets\.imgs\.metadata\.file: labels\.parquet is not a readable "
                                          r"parquet table \(.*\)$"):
        select_new(spec, {"selection_config": {"n_samples": 1, "strategies": [DIVERSITY, BALANCE]}}, "e2", 0)


def test_video_frames_take_their_rows_by_frame_index(tmp_path: Path) -> None:
    import subprocess

    from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable

    body = {"type": "VIDEOS", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
            "metadata": {"file": "labels.ndjson"}}
    spec = parse_datasets({"datasets": {"vids": body}}, tmp_path)["vids"]
    src = Path(spec.input)
    src.mkdir(parents=True)
    subprocess.run([ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=96x64:rate=5:duration=2", "-pix_fmt", "yuv420p", str(src / "clip.mp4")],
                   check=True)
    # Frames 0..9: even frames "day", odd frames "night"; the target wants only night.
    write_table(spec, pl.DataFrame({"raw_key": ["clip.mp4"] * 10, "frame_index": list(range(10)),
                                    "light": ["day", "night"] * 5}))
    balance = {"input": {"type": "METADATA", "key": "light"},
               "strategy": {"type": "BALANCE", "target": {"night": 1.0}, "strength": 3}}
    summary = select_new(spec, {"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, balance]}}, "v1", 0)
    _, picks, _ = DatapoolStore(LocalStorage(spec.output)).read_staging("v1")  # type: ignore[misc]
    assert [i % 2 for i in picks["frame_index"]] == [1, 1, 1]
    assert summary.balance is not None and summary.balance[0]["picks"] == {"night": 3, "day": 0}
    assert summary.balance[0]["achieved"] == {"night": 1.0, "day": 0.0}


def test_datapool_run_checks_the_table_before_registering_any_shard(tmp_path: Path) -> None:
    import dagster as dg

    from datapool_pipeline.launch import prepare_run

    spec = spec_with_table(tmp_path, "labels.csv")
    write_images(Path(spec.input), 3)
    config = parse_run_config({"selection_config": {"n_samples": 1, "strategies": [DIVERSITY, BALANCE]}})
    with dg.DagsterInstance.ephemeral() as instance:
        with pytest.raises(ConfigError, match=r"^datasets\.imgs\.metadata\.file: labels\.csv is not in the input"):
            prepare_run(spec, instance, config)
        assert DatapoolStore(LocalStorage(spec.output)).read_registry().height == 0
        write_table(spec, pl.DataFrame({"raw_key": ["img_000.png"], "weather": ["rain"]}))
        assert prepare_run(spec, instance, config).files == 3


def test_rows_without_a_frame_index_apply_to_every_frame_of_their_file() -> None:
    from datapool_pipeline.workflow.user_metadata import UserTable

    table = UserTable("t.csv", pl.DataFrame({"raw_key": ["v.mp4", "v.mp4", "a.jpg"], "frame_index": [1, None, None],
                                             "light": ["night", "day", "day"]}))
    samples = pl.DataFrame({"raw_key": ["v.mp4", "v.mp4", "a.jpg", "b.jpg"], "frame_index": [0, 1, 0, 0]})
    assert table.attach(samples)["user:light"].to_list() == ["day", "night", "day", None]
    assert table.attach(samples.clear()).columns == ["raw_key", "frame_index", "user:light"]
