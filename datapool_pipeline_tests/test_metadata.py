"""Built-in metadata (brightness, contrast, sharpness, pixel_correlation, timestamp, duration, width, height,
file_size) from the embedding pass, and the METADATA strategies WEIGHTS and THRESHOLD: numpy units, config errors, and
real runs with the tiny embedder on ffmpeg-generated images and a video."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import ConfigError, RunAborted
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable
from datapool_pipeline.selection import greedy_k_center, metadata, strategies
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.embeddings import embed_shard
from datapool_pipeline_tests.helpers import TINY_FINGERPRINT, tiny_embedder
from datapool_pipeline_tests.test_strategies import clustered
from datapool_pipeline_tests.test_workflow import images_spec, select_new

DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}


def ffmpeg_still(path: Path, source: str, vf: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
    if vf:
        cmd += ["-vf", vf]
    subprocess.run([*cmd, "-frames:v", "1", str(path)], check=True)
    return path


def write_mixed_images(folder: Path) -> dict[str, str]:
    """Three sharp test images, two black ones and two blurred ones (key -> kind)."""
    kinds = {}
    for i, src in enumerate(["testsrc2", "mandelbrot", "smptehdbars"]):
        kinds[ffmpeg_still(folder / f"sharp_{i}.png", f"{src}=size=160x120:rate=1").name] = "sharp"
    for i, colour in enumerate(["black", "0x050505"]):
        kinds[ffmpeg_still(folder / f"black_{i}.png", f"color=c={colour}:size=160x120:rate=1").name] = "black"
    for i, src in enumerate(["testsrc2", "mandelbrot"]):
        path = ffmpeg_still(folder / f"blurred_{i}.png", f"{src}=size=160x120:rate=1", "gblur=sigma=12")
        kinds[path.name] = "blurred"
    return kinds


# ---- numpy units ------------------------------------------------------------------------------------


def test_frame_stats_of_black_noise_and_blurred_frames() -> None:
    rng = np.random.default_rng(0)
    black = np.zeros((32, 32, 3), np.uint8)
    noise = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    gradient = np.repeat(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], 32, 0).repeat(3, 2)
    assert metadata.frame_stats(black) == (0.0, 0.0, 0.0)
    b, c, s = metadata.frame_stats(noise)
    assert 100 < b < 155 and c > 30 and s > 1000
    gb, gc, gs = metadata.frame_stats(gradient.astype(np.uint8))
    assert 120 < gb < 135 and gc > 60 and gs < 1  # smooth: contrast but no sharpness
    assert metadata.frame_stats(np.full((2, 2, 3), 7, np.uint8))[2] == 0.0
    # pixel_correlation: noise about 0, smooth or flat frames 1; a source upscaled 3x is read 3 pixels apart.
    assert max(abs(c) for c in metadata.neighbour_correlations(metadata.luma_of(noise))) < 0.2
    assert metadata.neighbour_correlations(metadata.luma_of(gradient.astype(np.uint8)))[0] > 0.9
    flat = (120 + rng.integers(-2, 3, size=(32, 32))).astype(np.uint8)  # a flat frame's compression noise
    for frame in (black, flat):
        assert metadata.neighbour_correlations(metadata.luma_of(frame)) == (1.0,) * metadata.MAX_CORRELATION_LAG
    upscaled = np.repeat(np.repeat(noise[:11, :11], 3, 0), 3, 1)  # 11x11 noise shown at 33x33
    correlations = metadata.neighbour_correlations(metadata.luma_of(upscaled))
    assert correlations[0] > 0.5 and metadata.pixel_correlation(correlations, 33, 11, 11) < 0.2
    assert [metadata.correlation_lag(224, w, h) for w, h in [(1280, 720), (224, 300), (160, 120), (96, 96),
                                                              (10, 10), (None, None)]] == [1, 1, 2, 3, 4, 1]


def test_thresholds_and_weights_on_values() -> None:
    from datapool_pipeline.config import BUILTIN_METADATA_KEYS

    assert metadata.BUILTIN_KEYS == BUILTIN_METADATA_KEYS
    v = np.array([1.0, 2.0, np.nan, 3.0])
    assert metadata.passes(v, 2.0, "BIGGER").tolist() == [False, False, False, True]
    assert metadata.passes(v, 2.0, "BIGGER_EQUAL").tolist() == [False, True, False, True]
    assert metadata.passes(v, 2.0, "SMALLER").tolist() == [True, False, False, False]
    assert metadata.passes(v, 2.0, "SMALLER_EQUAL").tolist() == [True, True, False, False]
    assert metadata.weight_scores(v).tolist() == [0.0, 0.5, 0.0, 1.0]
    assert metadata.weight_scores(np.array([4.0, 4.0])).tolist() == [1.0, 1.0]
    assert metadata.weight_scores(np.array([np.nan])).tolist() == [0.0]


def test_weights_bonus_steers_the_greedy_and_diversity_alone_is_unchanged() -> None:
    x, _ = clustered(n=200, outliers=0)
    config = {"n_samples": 10, "strategies": [
        DIVERSITY, {"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS", "strength": 5}}]}
    selection = parse_run_config({"selection_config": config}).selection_config
    frame = pl.DataFrame({"sharpness": np.where(np.arange(200) % 2 == 0, 100.0, 1.0)})
    bonus = metadata.weights_bonus(frame, selection)
    assert bonus is not None and set(bonus.tolist()) == {0.0, 5.0}
    picks = strategies.select(x, 10, selection, metadata_bonus=bonus).result.picks
    assert all(i % 2 == 0 for i in picks)  # the high-weight half only
    with pytest.raises(ValueError, match="metadata_bonus"):
        strategies.select(x, 10, selection)
    # THRESHOLD alone adds no score term: the greedy part is plain k-center.
    only_threshold = parse_run_config({"selection_config": {"n_samples": 10, "strategies": [
        DIVERSITY, {"input": {"type": "METADATA", "key": "brightness"},
                    "strategy": {"type": "THRESHOLD", "threshold": 1, "operation": "BIGGER"}}]}}).selection_config
    assert metadata.weights_bonus(frame, only_threshold) is None
    assert strategies.select(x, 10, only_threshold).result.picks == greedy_k_center(x, 10).picks


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": {"type": "METADATA"}, "strategy": {"type": "WEIGHTS"}},
         "strategies[1].input.key: METADATA needs a key, one of the built-in keys brightness, contrast, sharpness"),
        ({"input": {"type": "METADATA", "key": "frame_index"}, "strategy": {"type": "WEIGHTS"}},
         "strategies[1].input.key: 'frame_index' identifies the samples of the metadata table; name a value column"),
        ({"input": {"type": "METADATA", "key": "brightness"}, "strategy": {"type": "THRESHOLD", "operation": "BIGGER"}},
         "strategies[1].strategy.threshold: THRESHOLD needs threshold"),
        ({"input": {"type": "METADATA", "key": "brightness"}, "strategy": {"type": "THRESHOLD", "threshold": 20}},
         "strategies[1].strategy.operation: THRESHOLD needs operation (BIGGER, BIGGER_EQUAL, SMALLER or "
         "SMALLER_EQUAL)"),
        ({"input": {"type": "METADATA", "key": "brightness"},
          "strategy": {"type": "THRESHOLD", "threshold": 20, "operation": "LARGER"}},
         "strategies[1].strategy.operation: must be one of BIGGER, BIGGER_EQUAL, SMALLER, SMALLER_EQUAL"),
        ({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "WEIGHTS"}},
         "strategies[1].input.type: WEIGHTS needs a METADATA or SCORES input with a key, not EMBEDDINGS"),
        ({"input": {"type": "METADATA", "key": "brightness"}, "strategy": {"type": "TYPICALITY"}},
         "strategies[1].input.type: METADATA is an input of WEIGHTS, THRESHOLD and BALANCE, not of TYPICALITY"),
        ({"input": {"type": "EMBEDDINGS", "key": "brightness"}, "strategy": {"type": "TYPICALITY"}},
         "strategies[1].input.key: only a METADATA, SCORES or PREDICTIONS input takes a key, not EMBEDDINGS"),
        ({"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS", "threshold": 3}},
         "strategies[1].strategy.threshold: only THRESHOLD takes it, not WEIGHTS"),
        ({"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS", "strength": 0}},
         "strategies[1].strategy.strength: must be > 0"),
    ],
)
def test_wrong_metadata_configs_name_the_field(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, entry]}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_vendor_shapes_validate_and_one_entry_per_key() -> None:
    entries = [
        DIVERSITY,
        {"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS"}},
        {"input": {"type": "METADATA", "key": "brightness"},
         "strategy": {"type": "THRESHOLD", "threshold": 20, "operation": "BIGGER"}},
        {"input": {"type": "METADATA", "key": "sharpness"},
         "strategy": {"type": "THRESHOLD", "threshold": 5.5, "operation": "BIGGER_EQUAL"}},
    ]
    config = parse_run_config({"selection_config": {"n_samples": 3, "strategies": entries}})
    assert [e.input.key for e in config.selection_config.metadata_entries("THRESHOLD")] == ["brightness", "sharpness"]
    dumped = config.to_dict()["selection_config"]["strategies"]
    assert dumped[2] == {"input": {"type": "METADATA", "key": "brightness"},
                         "strategy": {"type": "THRESHOLD", "strength": 1.0, "threshold": 20.0, "operation": "BIGGER"}}
    assert parse_run_config(config.to_dict()) == config  # what run records store parses back
    with pytest.raises(ConfigError, match=r"strategies\[2\]\.strategy\.type: WEIGHTS on key sharpness is given twice"):
        parse_run_config({"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, entries[1], entries[1]]}})


def test_launchpad_config_accepts_metadata_strategies() -> None:
    from datapool_pipeline.assets.run_config import DatapoolRunConfig

    raw = {"selection_config": {"n_samples": 2, "strategies": [
        DIVERSITY, {"input": {"type": "METADATA", "key": "brightness"},
                    "strategy": {"type": "THRESHOLD", "threshold": 20.0, "operation": "BIGGER"}}]}}
    parsed = DatapoolRunConfig(**raw).parsed()
    assert parsed.selection_config.metadata_entries("THRESHOLD")[0].strategy.operation == "BIGGER"
    assert parsed == parse_run_config(raw)

    # Through Dagster's own config system (the launch job's typed config): operation is an enum there.
    import dagster as dg

    from datapool_pipeline.definitions import build_definitions

    datasets = Path(__file__).resolve().parents[1] / "datasets.yaml"
    job = build_definitions(str(datasets)).resolve_job_def("videos_datapool_launch")
    op = "videos_datapool__find_new_files"
    assert dg.validate_run_config(job, {"ops": {op: {"config": raw}}})
    bad = {"selection_config": {"n_samples": 2, "strategies": [
        DIVERSITY, {"input": {"type": "METADATA", "key": "brightness"},
                    "strategy": {"type": "THRESHOLD", "threshold": 20.0, "operation": "LARGER"}}]}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="LARGER"):
        dg.validate_run_config(job, {"ops": {op: {"config": bad}}})


# ---- real runs ---------------------------------------------------------------------------------------


def _embeddings(spec: DatasetSpec) -> pl.DataFrame:
    store = DatapoolStore(LocalStorage(spec.output))
    shards = store.read_registry()["shard_id"].unique().to_list()
    return pl.concat([store.read_shard_embeddings(s, TINY_FINGERPRINT) for s in shards]).sort("raw_key")


def test_images_metadata_threshold_removes_black_and_weights_prefer_sharp(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    kinds = write_mixed_images(Path(spec.input))
    threshold = {"input": {"type": "METADATA", "key": "brightness"},
                 "strategy": {"type": "THRESHOLD", "threshold": 20, "operation": "BIGGER"}}
    summary = select_new(spec, {"selection_config": {"n_samples": 7, "strategies": [DIVERSITY, threshold]}}, "r1", 0)
    emb = _embeddings(spec)
    by_kind = {kind: emb.filter(pl.col("raw_key").is_in([k for k, v in kinds.items() if v == kind]))
               for kind in ("sharp", "black", "blurred")}
    assert by_kind["black"]["brightness"].max() < 10 and by_kind["sharp"]["brightness"].min() > 40
    assert by_kind["blurred"]["sharpness"].max() < by_kind["sharp"]["sharpness"].min()
    assert by_kind["black"]["contrast"].max() < 1
    assert emb["width"].to_list() == [160] * 7 and emb["height"].to_list() == [120] * 7
    assert emb["file_size"].to_list() == [(Path(spec.input) / k).stat().st_size for k in emb["raw_key"]]
    assert emb["duration_s"].null_count() == 7

    # THRESHOLD: both black images removed before the greedy, counted; everything else selected.
    assert (summary.threshold_removed, summary.candidates, summary.selected) == (2, 5, 5)
    store = DatapoolStore(LocalStorage(spec.output))
    meta, picks, _ = store.read_staging("r1")  # type: ignore[misc]
    assert meta["thresholds"] == [{"key": "brightness", "operation": "BIGGER", "threshold": 20.0,
                                   "removed": 2, "unknown": 0}]
    assert not any(kinds[k] == "black" for k in picks["raw_key"])
    store.delete_staging("r1")

    # WEIGHTS on sharpness (strong): the two picks are sharp images, never the blurred or black ones.
    weights = {"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS", "strength": 4}}
    summary = select_new(spec, {"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, weights]}}, "r2", 1)
    _, picks, _ = store.read_staging("r2")  # type: ignore[misc]
    assert summary.selected == 3 and [kinds[k] for k in picks["raw_key"]] == ["sharp"] * 3
    store.delete_staging("r2")

    # A threshold nothing passes aborts before any upload, saying which threshold removed what.
    impossible = {**threshold, "strategy": {**threshold["strategy"], "threshold": 1000}}
    message = r"THRESHOLD strategies removed all 7 new samples \(brightness BIGGER 1000: 7\)"
    with pytest.raises(RunAborted, match=message):
        select_new(spec, {"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, impossible]}}, "r3", 2)


def test_old_shards_without_metadata_still_load_and_thresholds_say_to_re_embed(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    write_mixed_images(Path(spec.input))
    first = select_new(spec, {"selection_config": {"n_samples": 2}}, "r1", 0)
    store = DatapoolStore(LocalStorage(spec.output))
    store.delete_staging("r1")
    # Rewrite the cached embeddings as a shard written before the metadata columns existed.
    for shard in store.read_registry()["shard_id"].unique().to_list():
        df = store.read_shard_embeddings(shard, TINY_FINGERPRINT)
        assert df is not None
        store.write_shard_embeddings(shard, TINY_FINGERPRINT, df.drop(list(metadata.METADATA_SCHEMA)))
    again = select_new(spec, {"selection_config": {"n_samples": 2}}, "r2", 1)  # DIVERSITY alone: same picks
    _, picks, _ = store.read_staging("r2")  # type: ignore[misc]
    assert again.selected == first.selected == 2 and picks.height == 2
    store.delete_staging("r2")
    threshold = {"input": {"type": "METADATA", "key": "brightness"},
                 "strategy": {"type": "THRESHOLD", "threshold": 20, "operation": "BIGGER"}}
    with pytest.raises(RunAborted, match="METADATA key.s. brightness have no value for any of the 7 new samples: "
                                         "shard.s. .* were embedded before the built-in metadata existed"):
        select_new(spec, {"selection_config": {"n_samples": 2, "strategies": [DIVERSITY, threshold]}}, "r3", 2)


def test_video_frames_get_timestamp_duration_resolution_and_low_brightness_when_black(tmp_path: Path) -> None:
    spec = DatasetSpec(name="vids", type="VIDEOS", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    src = Path(spec.input)
    src.mkdir(parents=True)
    # 1 s black, then 1 s of a test pattern, 5 fps, 96x64.
    subprocess.run([
        ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "color=c=black:size=96x64:rate=5:duration=1",
        "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=5:duration=1",
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-pix_fmt", "yuv420p",
        str(src / "clip.mp4"),
    ], check=True)  # fmt: skip
    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    threshold = {"input": {"type": "METADATA", "key": "brightness"},
                 "strategy": {"type": "THRESHOLD", "threshold": 20, "operation": "BIGGER_EQUAL"}}
    summary = select_new(spec, {"selection_config": {"n_samples": 10, "strategies": [DIVERSITY, threshold]}}, "v1", 0)
    shard = store.read_registry()["shard_id"][0]
    emb = embed_shard(spec, store, input_storage, tiny_embedder(), shard)  # cached
    assert emb.cached
    df = store.read_shard_embeddings(shard, TINY_FINGERPRINT)
    assert df is not None and df.height == 10
    assert df["timestamp_s"].to_list() == pytest.approx([i * 0.2 for i in range(10)])
    assert df["duration_s"].to_list() == pytest.approx([2.0] * 10)
    assert set(df["width"]) == {96} and set(df["height"]) == {64}
    assert set(df["file_size"]) == {(src / "clip.mp4").stat().st_size}
    assert df["brightness"][:5].max() < 20 <= df["brightness"][5:].min()
    assert (summary.threshold_removed, summary.candidates, summary.selected) == (5, 5, 5)
    _, picks, _ = store.read_staging("v1")  # type: ignore[misc]
    assert sorted(picks["frame_index"].to_list()) == [5, 6, 7, 8, 9]


def write_noise_images(folder: Path) -> dict[str, str]:
    """Two frames of static (ffmpeg geq random luma): one larger than the tiny embedder's 32x32, one of
    12x9 pixels, which the decode upscales (interpolation correlates neighbours: pixel_correlation's lag)."""
    noise = "geq=lum='random(1)*255':cb=128:cr=128"
    return {ffmpeg_still(folder / f"noise_{i}.png", f"nullsrc=size={size}:rate=1", noise).name: "noise"
            for i, size in enumerate(["160x120", "12x9"])}


def test_dataset_filter_drops_black_blurred_and_noise_frames_and_counts_them(tmp_path: Path) -> None:
    from datapool_pipeline.datasets import parse_datasets

    raw = {"datasets": {"imgs": {
        "type": "IMAGES", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "images_per_shard": 4,
        # The tiny embedder decodes at 32x32, where sharpness is larger than at 224 (the default's scale).
        "filters": {"drop_black": True, "drop_blurred": True, "blurred_max_sharpness": 100, "drop_noise": True}}}}
    spec = parse_datasets(raw, tmp_path)["imgs"]
    kinds = {**write_mixed_images(Path(spec.input)), **write_noise_images(Path(spec.input))}
    summary = select_new(spec, {"selection_config": {"n_samples": 9}}, "f1", 0)
    assert summary.filtered == {"black": 2, "blurred": 2, "noise": 2}
    assert (summary.candidates, summary.selected) == (3, 3)
    store = DatapoolStore(LocalStorage(spec.output))
    meta, picks, _ = store.read_staging("f1")  # type: ignore[misc]
    assert meta["filtered"] == {"black": 2, "blurred": 2, "noise": 2}
    assert sorted(kinds[k] for k in picks["raw_key"]) == ["sharp"] * 3
    store.delete_staging("f1")
    correlation = dict(_embeddings(spec).select("raw_key", "pixel_correlation").iter_rows())
    noise = [correlation[k] for k, kind in kinds.items() if kind == "noise"]
    scenes = [correlation[k] for k, kind in kinds.items() if kind != "noise"]
    assert max(noise) < 0.3 < 0.8 < min(scenes)

    # Shards embedded before pixel_correlation existed: their samples are kept by drop_noise.
    for shard in store.read_registry()["shard_id"].unique().to_list():
        df = store.read_shard_embeddings(shard, TINY_FINGERPRINT)
        assert df is not None
        store.write_shard_embeddings(shard, TINY_FINGERPRINT, df.drop("pixel_correlation"))
    only_noise = {**raw["datasets"]["imgs"], "filters": {"drop_noise": True}}
    kept = select_new(parse_datasets({"datasets": {"imgs": only_noise}}, tmp_path)["imgs"],
                      {"selection_config": {"n_samples": 9}}, "f0", 1)
    assert (kept.filtered, kept.candidates) == ({"noise": 0}, 9)
    store.delete_staging("f0")

    everything = {**raw["datasets"]["imgs"], "filters": {"drop_blurred": True, "blurred_max_sharpness": 1e9}}
    with pytest.raises(RunAborted, match=r"filter \(datasets.yaml filters\) dropped all 9 new samples \(9 blurred\)"):
        select_new(parse_datasets({"datasets": {"imgs": everything}}, tmp_path)["imgs"],
                {"selection_config": {"n_samples": 2}}, "f2", 1)

    bad = {**raw["datasets"]["imgs"], "filters": {"drop_black": True, "black_max_brightness": 300}}
    with pytest.raises(ConfigError, match=r"imgs\.filters\.black_max_brightness"):
        parse_datasets({"datasets": {"imgs": bad}}, tmp_path)
    bad = {**raw["datasets"]["imgs"], "filters": {"drop_noise": True, "noise_max_correlation": 2}}
    with pytest.raises(ConfigError, match=r"imgs\.filters\.noise_max_correlation"):
        parse_datasets({"datasets": {"imgs": bad}}, tmp_path)
