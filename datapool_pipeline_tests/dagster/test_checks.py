"""The datapool integrity checks behind the asset checks: they pass on a sound pool and name what is wrong."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl

from datapool_pipeline.datapool.integrity import duplicate_samples, embedding_norms, empty_tags
from datapool_pipeline.datapool.store import DatapoolState


def _state(ids: list[str], tags: list[str], emb: np.ndarray, manifest: dict[str, int]) -> DatapoolState:
    state = DatapoolState(store=None, commits=[SimpleNamespace(tag=t, n_samples=n) for t, n in manifest.items()])
    dim = emb.shape[1]
    state.__dict__["samples"] = pl.DataFrame(
        {"sample_id": ids, "tag": tags, "embedding": pl.Series(emb.astype(np.float32), dtype=pl.Array(pl.Float32, dim))}
    )
    return state


def _unit(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sound_datapool_passes_every_check() -> None:
    state = _state(["a", "b", "c"], ["t1", "t1", "t2"], _unit(3), {"t1": 2, "t2": 1})
    for check in (duplicate_samples, empty_tags, embedding_norms):
        outcome = check(state)
        assert outcome.passed, outcome.description
    assert empty_tags(state).metadata["latest_tag"] == "t2"


def test_checks_name_the_problem() -> None:
    emb = _unit(4)
    emb[1] *= 2.0
    emb[2, 0] = np.nan
    state = _state(["a", "b", "a", "d"], ["t1", "t1", "t2", "t2"], emb, {"t1": 2, "t2": 2, "t3": 0})
    dup = duplicate_samples(state)
    assert not dup.passed and dup.metadata["duplicated_sample_ids"] == 1 and "a" in dup.description
    empty = empty_tags(state)
    assert not empty.passed and "t3" in empty.description
    norms = embedding_norms(state)
    assert not norms.passed and norms.metadata["non_finite"] == 1 and norms.metadata["not_unit_norm"] == 1
