"""The persistent hnswlib index over the datapool: reused and caught up between runs, rebuilt when it does
not match the pool, and selecting exactly what exact seeding selects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datapool.pool_index import INDEX_PREFIX, load_pool_index
from datapool_pipeline.selection import greedy_k_center, kcenter
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids(n: int, start: int = 0) -> list[str]:
    return [f"s{i}" for i in range(start, start + n)]


def test_index_is_stored_then_caught_up_with_new_commits(tmp_path: Path) -> None:
    store = DatapoolStore(LocalStorage(tmp_path))
    rng = np.random.default_rng(0)
    first, later = unit(rng, 800, 32), unit(rng, 300, 32)
    messages: list[str] = []

    index = load_pool_index(store, first, ids(800), "model-a", log=messages.append)
    assert index.get_current_count() == 800 and "building" in messages[-1]
    pool = np.concatenate([first, later])
    index = load_pool_index(store, pool, ids(1100), "model-a", log=messages.append)
    assert index.get_current_count() == 1100
    assert "800 samples stored, adding 300" in messages[-1]
    messages.clear()
    again = load_pool_index(store, pool, ids(1100), "model-a", log=messages.append)
    assert again.get_current_count() == 1100 and messages == []  # nothing to add, nothing rebuilt

    # its vectors, by label, read from the index file (hnswlib's get_items is ~85 us a row)
    order = rng.permutation(1100)
    assert np.array_equal(index.vectors.rows(order), pool[order])
    assert np.array_equal(again.vectors.rows(order), pool[order])

    cands = unit(rng, 500, 32)
    exact = greedy_k_center(cands, 40, pool=pool, exact_max_pairs=1 << 62)
    indexed = greedy_k_center(cands, 40, pool=pool, exact_max_pairs=0, pool_index=again)
    assert indexed.picks == exact.picks
    assert np.array_equal(indexed.pick_distances, exact.pick_distances)
    from_index = greedy_k_center(cands, 40, pool=None, pool_index=again)  # the pool read from the index
    assert from_index.picks == exact.picks


@pytest.mark.parametrize("change", ["other order", "other model", "damaged file", "smaller pool"])
def test_an_index_that_does_not_match_the_pool_is_rebuilt(tmp_path: Path, change: str) -> None:
    store = DatapoolStore(LocalStorage(tmp_path))
    pool = unit(np.random.default_rng(1), 400, 16)
    load_pool_index(store, pool, ids(400), "model-a")
    pool_ids, model = ids(400), "model-a"
    if change == "other order":
        pool, pool_ids = pool[::-1].copy(), pool_ids[::-1]
    elif change == "other model":
        model = "model-b"
    elif change == "damaged file":
        (tmp_path / INDEX_PREFIX / "model-a.hnsw").write_bytes(b"not an index")
    else:
        pool, pool_ids = pool[:100], pool_ids[:100]
    messages: list[str] = []

    index = load_pool_index(store, pool, pool_ids, model, log=messages.append)

    assert "building" in messages[0] and index.get_current_count() == len(pool)
    labels, _ = index.knn_query(pool[:20], k=1)
    assert labels[:, 0].tolist() == list(range(20))  # labels are the rows of this pool


@pytest.mark.slow
def test_pipeline_with_hnsw_seeding_selects_what_exact_seeding_selects(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo scenario twice on the same videos: exact seeding, and hnswlib with the stored index."""
    videos = tmp_path / "videos"
    add_videos(videos, ["a.mp4", "b.mp4", "c.mp4"], seconds=3)
    add_videos(videos / "later", ["d.mp4", "e.mp4"], first_source=3, seconds=3)
    tags: dict[str, list[list[tuple[str, int]]]] = {}
    for mode in ("exact", "hnsw"):
        if mode == "hnsw":
            monkeypatch.setattr(kcenter, "EXACT_SEEDING_MAX_PAIRS", 0)
        inp, out = tmp_path / mode / "in", tmp_path / mode / "out"
        inp.mkdir(parents=True)
        yaml_path = write_datasets_yaml(tmp_path / mode / "datasets.yaml", "pool", "VIDEOS", str(inp), str(out))
        ds = ("--datasets", str(yaml_path), "run", "pool")
        for name in ("a.mp4", "b.mp4", "c.mp4"):
            (inp / name).write_bytes((videos / name).read_bytes())
        assert cli(*ds, "--n-samples", "20").code == 0
        for name in ("d.mp4", "e.mp4"):
            (inp / name).write_bytes((videos / "later" / name).read_bytes())
        second = cli(*ds, "--use-datapool", "--n-samples", "15")
        assert second.code == 0, second.err
        third = cli(*ds, "--use-datapool", "--process-all", "--n-samples", "10")
        assert third.code == 0, third.err
        state = DatapoolStore(LocalStorage(out)).load_state()
        # Frames in pick order (the sample ids differ: a local file's version includes its mtime).
        tags[mode] = [state.tag_samples(t).select(["raw_key", "frame_index"]).rows() for t in state.tags]
        index_files = sorted(p.name for p in (out / INDEX_PREFIX).glob("*")) if (out / INDEX_PREFIX).exists() else []
        if mode == "hnsw":
            assert "building the datapool's hnswlib index over 20 samples" in second.err
            assert "20 samples stored, adding 15" in third.err
            assert len(index_files) == 2  # <model>.hnsw and <model>.json
        else:
            assert index_files == []
    assert [len(t) for t in tags["exact"]] == [20, 15, 10]
    assert tags["hnsw"] == tags["exact"]


@pytest.mark.slow
def test_model_change_reembeds_the_pool_and_uses_a_new_index(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the dataset's model changes, the pool is read from the re-embedded shards (same row order),
    a run that has not re-embedded the pool aborts, and the index is kept per model."""
    monkeypatch.setattr(kcenter, "EXACT_SEEDING_MAX_PAIRS", 0)
    inp, out = tmp_path / "in", tmp_path / "out"
    add_videos(inp, ["a.mp4", "b.mp4"], seconds=2)
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "pool", "VIDEOS", str(inp), str(out))
    ds = ("--datasets", str(yaml_path), "run", "pool")
    assert cli(*ds, "--n-samples", "10").code == 0
    add_videos(inp, ["c.mp4"], first_source=2, seconds=2)
    assert cli(*ds, "--use-datapool", "--n-samples", "5").code == 0  # index of the first model: 10 rows
    # Another embedding space. (A second file: in one process Dagster reuses the job it reconstructed
    # for the same arguments, so an edit of the first file would not be seen by this in-process CLI.)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml_path.read_text() + "      seed: 1\n")
    ds = ("--datasets", str(changed), "run", "pool")
    add_videos(inp, ["d.mp4"], first_source=3, seconds=2)

    stale = cli(*ds, "--use-datapool", "--n-samples", "5")
    assert stale.code == 1 and "backfill the embeddings asset" in stale.err
    again = cli(*ds, "--use-datapool", "--process-all", "--n-samples", "5")

    assert again.code == 0, again.err
    assert "building the datapool's hnswlib index over 15 samples" in again.err
    state = DatapoolStore(LocalStorage(out)).load_state()
    assert state.size == 20 and state.samples["sample_id"].n_unique() == 20
    assert sorted(p.stem for p in (out / INDEX_PREFIX).glob("*.json")) == [
        "ViT-S-32--none-seed0", "ViT-S-32--none-seed1"]
