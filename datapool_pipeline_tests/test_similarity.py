"""SIMILARITY (text prompts or query images) combined with DIVERSITY, and relevant filenames: numpy checks,
config errors, real runs with the tiny embedder, and (slow) a real open_clip text tower with random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from datapool_pipeline.config import SelectionConfig, parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import ConfigError, RunAborted
from datapool_pipeline.selection import greedy_k_center, strategies
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline_tests.helpers import TEST_MODEL, tiny_embedder
from datapool_pipeline_tests.test_strategies import clustered, unit
from datapool_pipeline_tests.test_workflow import images_spec, select_new, write_images

DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}


def similarity_entry(strength: float = 1.0, **queries: Any) -> dict[str, Any]:
    return {"input": {"type": "EMBEDDINGS", **queries}, "strategy": {"type": "SIMILARITY", "strength": strength}}


def selection_with(*entries: dict[str, Any], n: int = 1, **extra: Any) -> SelectionConfig:
    raw = {"selection_config": {"n_samples": n, "strategies": [DIVERSITY, *entries], **extra}}
    return parse_run_config(raw).selection_config


# -- numpy: the combined greedy with a similarity term ------------------------------------------------------


def test_similarity_scores_are_the_max_cosine_to_the_queries_normalised() -> None:
    x = unit(np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.float64))
    queries = unit(np.array([[1, 0, 0], [0, 0, 1]], np.float64))
    raw, norm = strategies.similarity_scores(x, queries)
    assert np.allclose(raw, [1.0, 0.0, np.sqrt(0.5), 1.0], atol=1e-6)
    assert np.allclose(norm, raw, atol=1e-6)  # raw already spans 0..1 here
    raw, norm = strategies.similarity_scores(x[:1], queries)
    assert np.allclose(norm, [1.0])  # one candidate (no spread): every score is 1


def test_a_query_equal_to_a_candidate_makes_it_the_first_pick() -> None:
    x, _ = clustered()
    for target in (7, 123, 480):
        _, similarity = strategies.similarity_scores(x, x[target : target + 1])
        out = strategies.select(x, 5, selection_with(similarity_entry(keys=["q.png"])), similarity=similarity)
        assert out.result.picks[0] == target and len(set(out.result.picks)) == 5
        # Given a datapool, a strong SIMILARITY still picks the query's own sample first.
        pool = x[np.arange(len(x)) % 7 == 0]
        pool = pool[~np.all(np.isclose(pool, x[target]), axis=1)]
        out = strategies.select(x, 5, selection_with(similarity_entry(10.0, keys=["q.png"])), similarity=similarity,
                                pool=pool)
        assert out.result.picks[0] == target


def test_similarity_stays_datapool_aware_copies_of_the_pool_are_never_picked() -> None:
    x, _ = clustered()
    pool = x[:50]
    cand = np.concatenate([x[10:11], x[50:]])  # row 0 copies a datapool sample and equals the query
    _, similarity = strategies.similarity_scores(cand, x[10:11])
    assert similarity[0] == 1.0
    out = strategies.select(cand, 20, selection_with(similarity_entry(100.0, keys=["q.png"])), similarity=similarity,
                            pool=pool)
    assert 0 not in out.result.picks and len(out.result.picks) == 20
    # The strongest similarity pulls the picks towards the query's neighbourhood, still one by one.
    plain = strategies.select(cand, 20, selection_with(), pool=pool)
    assert similarity[out.result.picks].mean() > similarity[plain.result.picks].mean()


def test_a_strong_similarity_never_buys_near_copies_of_a_pick() -> None:
    """Near-copies of the most similar sample score as high as it; the novelty floor keeps them out while
    farther candidates remain (NOVELTY_FLOOR), for the reference and the lazy greedy alike."""
    x, _ = clustered()
    copies = unit(x[5] + np.random.default_rng(0).normal(scale=0.003, size=(5, x.shape[1])))
    cand = np.concatenate([x, copies])
    _, similarity = strategies.similarity_scores(cand, x[5:6])
    config = selection_with(similarity_entry(10.0, keys=["q.png"]))
    out = strategies.select(cand, 10, config, similarity=similarity)
    group = {5, *range(len(x), len(cand))}
    assert out.result.picks[0] in group and len(group & set(out.result.picks)) == 1
    picked = cand[out.result.picks]
    apart = np.sqrt(np.maximum(2 - 2 * picked @ picked.T, 0)) + 4 * np.eye(len(picked))
    assert apart.min() > 0.05  # the copies are 0.004-0.02 from each other
    bonus = 10.0 * similarity
    lazy = strategies.lazy_weighted_greedy(cand, 10, np.full(len(cand), 4.0), bonus=bonus, block_rows=64)
    assert lazy.result.picks == strategies.weighted_greedy(cand, 10, np.full(len(cand), 4.0), bonus=bonus).result.picks


def test_diversity_alone_is_unchanged_and_similarity_needs_its_scores() -> None:
    x, _ = clustered()
    out = strategies.select(x, 30, selection_with(), pool=x[:20], seed=2)
    assert out.result.picks == greedy_k_center(x, 30, pool=x[:20], seed=2).picks
    with pytest.raises(ValueError, match="SIMILARITY is configured"):
        strategies.select(x, 3, selection_with(similarity_entry(text=["a"])))


# -- config -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "selection_extra", "message"),
    [
        ([similarity_entry()], {},
         "selection_config.strategies[1].input: SIMILARITY needs queries: set input.text"),
        ([similarity_entry(text=["a"], keys=["b.png"])], {},
         "selection_config.strategies[1].input.keys: set exactly one of input.text / input.keys"),
        ([similarity_entry(text=[])], {}, "selection_config.strategies[1].input.text: give at least one query"),
        ([similarity_entry(keys=["a.png", " "])], {},
         "selection_config.strategies[1].input.keys[1]: must be a non-empty string"),
        ([similarity_entry(text="a dark street")], {}, "selection_config.strategies[1].input.text: expected a list"),
        ([{"input": {"type": "EMBEDDINGS", "keys": ["a.png"]}, "strategy": {"type": "TYPICALITY"}}], {},
         "selection_config.strategies[1].input.keys: only SIMILARITY takes queries, not TYPICALITY"),
        ([similarity_entry(text=["a"]), similarity_entry(keys=["b.png"])], {},
         "selection_config.strategies[2].strategy.type: SIMILARITY is given twice"),
        ([similarity_entry(text=["a"], strength=0)], {},
         "selection_config.strategies[1].strategy.strength: must be > 0"),
        ([], {"relevant_filenames": []}, "selection_config.relevant_filenames: give at least one raw file key"),
        ([], {"relevant_filenames": ["a.png", ""]},
         "selection_config.relevant_filenames[1]: must be a non-empty key"),
        ([], {"relevant_filenames": "a.png"}, "selection_config.relevant_filenames: expected a list"),
        ([], {"relevant_filenames_file": ""}, "selection_config.relevant_filenames_file: must be the key of a file"),
    ],
)
def test_wrong_similarity_and_relevant_configs_name_the_field(extra: list, selection_extra: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, *extra], **selection_extra}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_similarity_text_is_not_valid_without_similarity_on_diversity() -> None:
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.input\.text: only SIMILARITY takes queries"):
        parse_run_config({"selection_config": {"n_samples": 1, "strategies": [
            {"input": {"type": "EMBEDDINGS", "text": ["x"]}, "strategy": {"type": "DIVERSITY"}}]}})


def test_launchpad_config_accepts_similarity_and_relevant_filenames() -> None:
    from datapool_pipeline.assets.run_config import DatapoolRunConfig

    raw = {"n_samples": 2, "relevant_filenames_file": "relevant.txt",
           "strategies": [DIVERSITY, similarity_entry(text=["a dark street at night"], strength=0.5)]}
    parsed = DatapoolRunConfig(selection_config=raw).parsed()
    assert parsed.selection_config.strategy_entry("SIMILARITY").input.text == ("a dark street at night",)  # type: ignore[union-attr]
    assert parsed.to_dict()["selection_config"]["relevant_filenames_file"] == "relevant.txt"


# -- real runs with the tiny embedder --------------------------------------------------------------------------


def _picked_keys(spec: DatasetSpec, staging_id: str) -> list[str]:
    entry = DatapoolStore(LocalStorage(spec.output)).read_staging(staging_id)
    assert entry is not None
    return entry[1].sort("pick_rank")["raw_key"].to_list()


def test_query_image_key_is_picked_first_in_a_real_run(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    write_images(Path(spec.input), 12)
    config = {"selection_config": {"n_samples": 4, "strategies": [DIVERSITY, similarity_entry(keys=["img_007.png"])]}}
    summary = select_new(spec, config, "run-1")
    assert _picked_keys(spec, "run-1")[0] == "img_007.png" and summary.selected == 4
    sim = summary.similarity
    assert sim is not None and sim["query"] == "keys" and sim["queries"] == 1
    assert sim["pick_scores"][0] == pytest.approx(1.0, abs=1e-4) and sim["picks_max"] == pytest.approx(1.0, abs=1e-4)
    assert sim["candidates_mean"] < sim["picks_mean"] <= 1.0
    meta = DatapoolStore(LocalStorage(spec.output)).read_staging("run-1")
    assert meta is not None and meta[0]["similarity"]["pick_scores"] == sim["pick_scores"]
    # Without SIMILARITY the same run picks something else first (the query is not the farthest image).
    plain = select_new(spec, {"selection_config": {"n_samples": 4}}, "run-plain")
    assert _picked_keys(spec, "run-plain")[0] != "img_007.png" and plain.similarity is None


def test_missing_or_undecodable_query_keys_name_the_field(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    write_images(Path(spec.input), 4)
    (Path(spec.input) / "notes.txt").write_text("not an image")
    for key, reason in (("nope.png", "is not in the input datasource"), ("notes.txt", "is not a readable image")):
        config = {"selection_config": {"n_samples": 2,
                                       "strategies": [DIVERSITY, similarity_entry(keys=["img_000.png", key])]}}
        with pytest.raises(ConfigError, match=rf"selection_config.strategies\[1\].input.keys\[1\]: {key} {reason}"):
            select_new(spec, config, "run-x")
    assert DatapoolStore(LocalStorage(spec.output)).staging_ids() == []


def test_query_keys_are_checked_before_any_decoding(tmp_path: Path) -> None:
    from datapool_pipeline.workflow.queries import check_query_keys

    write_images(tmp_path, 2)
    storage = LocalStorage(str(tmp_path))
    check_query_keys(selection_with(similarity_entry(keys=["img_000.png", "img_001.png"])), storage)
    check_query_keys(selection_with(similarity_entry(text=["x"])), storage)  # nothing to check
    with pytest.raises(ConfigError, match=r"selection_config.strategies\[1\].input.keys\[1\]: gone.png is not in"):
        check_query_keys(selection_with(similarity_entry(keys=["img_000.png", "gone.png"])), storage)


def test_text_queries_run_end_to_end_with_the_tiny_embedder(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    write_images(Path(spec.input), 8)
    text = ["a dark street at night", "a red car"]
    config = {"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, similarity_entry(text=text)]}}
    summary = select_new(spec, config, "run-1")
    assert summary.selected == 3 and summary.similarity is not None
    assert summary.similarity["query"] == "text" and summary.similarity["queries"] == 2
    # The tiny embedder's text vectors are fixed random directions (seeded by the text): the first pick is
    # the candidate closest to them, since every candidate is equally far from the empty datapool.
    assert summary.similarity["pick_scores"][0] == pytest.approx(summary.similarity["candidates_max"], abs=1e-4)
    model = tiny_embedder()
    assert np.array_equal(model.embed_text(text), model.embed_text(text)) and model.embed_text(text).shape == (2, 16)


def test_a_model_without_a_text_tower_refuses_text_queries(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    write_images(Path(spec.input), 4)
    no_text = tiny_embedder()
    no_text.encode_text = None
    config = {"selection_config": {"n_samples": 2, "strategies": [DIVERSITY, similarity_entry(text=["a"])]}}
    with pytest.raises(ConfigError, match="has no text tower: text queries .* need an open_clip model"):
        select_new(spec, config, "run-1", model=no_text)


def test_a_frame_of_one_video_as_query_picks_that_videos_frames_first(tmp_path: Path) -> None:
    """VIDEOS: a still of video b.mp4 (written as a PNG next to the videos) as the query image; with a strong
    SIMILARITY the first picks are frames of b.mp4 (never the same frame twice: DIVERSITY still drives)."""
    from PIL import Image

    from datapool_pipeline.media.video import FrameStream
    from datapool_pipeline_tests.helpers import add_videos

    spec = DatasetSpec(name="vids", type="VIDEOS", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    add_videos(Path(spec.input), ["a.mp4", "b.mp4", "c.mp4"], seconds=1, fps=5)
    still = next(iter(FrameStream(str(Path(spec.input) / "b.mp4"), 128, **spec.video.frame_options())))
    Image.fromarray(still).save(Path(spec.input) / "query.png")
    config = {"selection_config": {"n_samples": 6, "strategies": [
        DIVERSITY, similarity_entry(5.0, keys=["query.png"])]}}
    summary = select_new(spec, config, "run-1")
    keys = _picked_keys(spec, "run-1")
    assert keys[0] == "b.mp4" and summary.similarity is not None
    assert summary.similarity["pick_scores"][0] > 0.99
    plain = select_new(spec, {"selection_config": {"n_samples": 6}}, "run-plain")
    assert plain.selected == 6 and _picked_keys(spec, "run-plain")[0] != "b.mp4"  # not b.mp4 by chance
    assert keys[:3] == ["b.mp4"] * 3 and keys.count("b.mp4") > _picked_keys(spec, "run-plain").count("b.mp4")


# -- relevant filenames ------------------------------------------------------------------------------------------


def test_relevant_filenames_restrict_the_candidates_and_leave_the_rest_for_later(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    store = DatapoolStore(LocalStorage(spec.output))
    write_images(Path(spec.input), 12)
    (Path(spec.input) / "relevant.txt").write_text("# the night shots\nimg_001.png\n\nimg_004.png\n  img_009.png \n"
                                                   "missing.png\n")
    config = {"selection_config": {"n_samples": 5, "relevant_filenames_file": "relevant.txt"}}
    first = select_new(spec, config, "run-1")
    assert (first.candidates, first.selected) == (3, 3)
    assert sorted(_picked_keys(spec, "run-1")) == ["img_001.png", "img_004.png", "img_009.png"]
    commit_staged(spec, store, LocalStorage(spec.input), "run-1", run_id="run-1")
    assert sorted(store.load_state().processed["raw_key"].to_list()) == ["img_001.png", "img_004.png", "img_009.png"]

    # The inline list and the file combine; files outside them stay unprocessed for later runs.
    config = {"worker_config": {"use_datapool": True},
              "selection_config": {"n_samples": 5, "relevant_filenames": ["img_002.png", "img_003.png"]}}
    second = select_new(spec, config, "run-2", minutes=1)
    assert sorted(_picked_keys(spec, "run-2")) == ["img_002.png", "img_003.png"] and second.candidates == 2
    commit_staged(spec, store, LocalStorage(spec.input), "run-2", run_id="run-2")
    third = select_new(spec, {"worker_config": {"use_datapool": True}, "selection_config": {"n_samples": 20}},
                    "run-3", minutes=2)
    assert third.candidates == 7  # the 12 images minus the 5 relevant ones already processed


def test_relevant_filenames_errors(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    write_images(Path(spec.input), 4)
    with pytest.raises(ConfigError, match="selection_config.relevant_filenames_file: lists/relevant.txt is not in "
                                          "the input datasource"):
        select_new(spec, {"selection_config": {"n_samples": 2, "relevant_filenames_file": "lists/relevant.txt"}}, "r")
    (Path(spec.input) / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="selection_config.relevant_filenames_file: empty.txt lists no raw file"):
        select_new(spec, {"selection_config": {"n_samples": 2, "relevant_filenames_file": "empty.txt"}}, "r")
    with pytest.raises(RunAborted, match="none of the 4 candidate raw file"):
        select_new(spec, {"selection_config": {"n_samples": 2, "relevant_filenames": ["other.png"]}}, "r")
    assert DatapoolStore(LocalStorage(spec.output)).staging_ids() == []


# -- slow: a real open_clip model (random weights) -------------------------------------------------------------


@pytest.mark.slow
def test_open_clip_text_tower_with_random_weights_runs_text_queries_end_to_end(tmp_path: Path) -> None:
    """Random weights make text and image embeddings unrelated, so which image a prompt selects is
    meaningless here; that needs real weights (e.g. ViT-B-32 laion2b_s34b_b79k). What runs for real: the
    tokenizer, the text tower, the shared embedding space (same dim, unit norm) and the combined greedy; a
    query image given by key is the first pick, as with any weights."""
    from datapool_pipeline.datasets import EmbeddingSpec
    from datapool_pipeline.embedding import load_model

    spec = images_spec(tmp_path).model_copy(update={"embedding": EmbeddingSpec(model=TEST_MODEL, pretrained=None)})
    write_images(Path(spec.input), 8)
    model = load_model(spec.embedding)
    text = model.embed_text(["a dark street at night", "a red car"])
    assert text.shape == (2, model.dim) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert np.allclose(model.embed_text(["a dark street at night"]), text[:1], atol=1e-5)  # deterministic

    config = {"selection_config": {"n_samples": 3, "strategies": [
        DIVERSITY, similarity_entry(text=["a dark street at night"], strength=2.0)]}}
    summary = select_new(spec, config, "run-text", model=model)
    assert summary.selected == 3 and summary.similarity is not None and summary.similarity["query"] == "text"
    assert summary.similarity["pick_scores"][0] == pytest.approx(summary.similarity["candidates_max"], abs=1e-4)

    config = {"selection_config": {"n_samples": 3, "strategies": [DIVERSITY, similarity_entry(keys=["img_005.png"])]}}
    select_new(spec, config, "run-keys", model=model)
    assert _picked_keys(spec, "run-keys")[0] == "img_005.png"


@pytest.mark.slow
def test_cli_run_with_similarity_keys_and_a_relevant_filenames_file(cli, tmp_path: Path) -> None:
    """Through `datapool run --config` (Dagster job, ViT-S-32 random weights): the relevant filenames file
    restricts the candidates in raw_files, the query image is the first pick, and the selection's Dagster
    metadata carries the similarity summary. A missing relevant filenames file fails naming it."""
    import dagster as dg
    import yaml

    from datapool_pipeline_tests.helpers import add_images, write_datasets_yaml

    input_dir, output = tmp_path / "in", tmp_path / "out"
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "imgs", "IMAGES", str(input_dir), str(output))
    add_images(input_dir, 10)
    relevant = ["img_0001.png", "img_0002.jpg", "img_0004.jpg", "img_0006.jpg", "img_0007.png"]
    (input_dir / "relevant.txt").write_text("\n".join(relevant) + "\n")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"selection_config": {
        "n_samples": 3, "relevant_filenames_file": "relevant.txt",
        "strategies": [DIVERSITY, similarity_entry(keys=["img_0006.jpg"])]}}))
    result = cli("--datasets", str(yaml_path), "run", "imgs", "--config", str(run_yaml))
    assert result.code == 0, result.err
    store = DatapoolStore(LocalStorage(output))
    state = store.load_state()
    picks = state.samples.sort("pick_rank")["raw_key"].to_list()
    assert picks[0] == "img_0006.jpg" and len(picks) == 3 and set(picks) <= set(relevant)
    assert sorted(state.processed.filter(pl.col("status") == "ok")["raw_key"].to_list()) == relevant

    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey(["imgs", "selection"]))
    assert event is not None and event.asset_materialization is not None
    meta = event.asset_materialization.metadata
    assert meta["similarity_queries"].value == "1 keys"
    assert meta["similarity_picks_max"].value == pytest.approx(1.0, abs=1e-3)

    run_yaml.write_text(yaml.safe_dump({"worker_config": {"use_datapool": True}, "selection_config": {
        "n_samples": 3, "relevant_filenames_file": "lists/missing.txt"}}))
    result = cli("--datasets", str(yaml_path), "run", "imgs", "--config", str(run_yaml))
    assert result.code != 0
    assert "selection_config.relevant_filenames_file: lists/missing.txt is not in the input datasource" in result.err
    assert store.load_state().size == 3
