"""Strategies beyond plain diversity: stopping_condition_minimum_distance and TYPICALITY combined with
DIVERSITY, on small numpy embeddings and on a real run with the tiny embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datapool_pipeline.config import SelectionConfig, parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.errors import ConfigError, RunAborted
from datapool_pipeline.selection import greedy_k_center, kcenter, strategies
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline_tests.test_workflow import images_spec, select_new, write_images


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def selection(minimum: float | None = None, typicality: float | None = None, margin: float | None = None
              ) -> SelectionConfig:
    div: dict[str, Any] = {"type": "DIVERSITY", "datapool_margin": margin}
    if minimum is not None:
        div["stopping_condition_minimum_distance"] = minimum
    entries: list[dict[str, Any]] = [{"input": {"type": "EMBEDDINGS"}, "strategy": div}]
    if typicality is not None:
        entries.append({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": typicality}})
    return parse_run_config({"selection_config": {"n_samples": 1, "strategies": entries}}).selection_config


def clustered(seed: int = 0, n: int = 600, outliers: int = 12, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Four clusters that vary along a few directions each, plus random-direction outliers (label -1)."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.normal(size=(4, dim)))
    labels = rng.integers(4, size=n - outliers)
    bases = rng.normal(size=(4, 3, dim)) / np.sqrt(dim)
    x = centers[labels] + np.einsum("ni,nid->nd", rng.normal(size=(len(labels), 3)) * 0.4, bases[labels])
    x += rng.normal(scale=0.02, size=x.shape)
    data = unit(np.concatenate([x, rng.normal(size=(outliers, dim))]))
    return data, np.concatenate([labels, np.full(outliers, -1)])


def test_diversity_alone_picks_exactly_what_greedy_k_center_picks() -> None:
    x, _ = clustered()
    pool = x[:50]
    for cfg_pool in (None, pool):
        out = strategies.select(x[50:], 40, selection(), pool=cfg_pool, seed=3)
        plain = greedy_k_center(x[50:], 40, pool=cfg_pool, seed=3)
        assert out.result.picks == plain.picks and out.stop_reason == strategies.REQUESTED
        assert np.array_equal(out.result.pick_distances, plain.pick_distances)


def test_minimum_distance_stops_early_and_covers_the_rest() -> None:
    x, _ = clustered()
    pool, cand = x[:50], x[50:]
    full = greedy_k_center(cand, 200, pool=pool)
    minimum = float(full.pick_distances[30])  # the 31st pick's distance: 31 picks are at least this far
    out = strategies.select(cand, 200, selection(minimum=minimum), pool=pool)
    assert out.stop_reason == strategies.MINIMUM_DISTANCE
    assert 31 <= len(out.result.picks) < 200 and out.result.picks == full.picks[: len(out.result.picks)]
    assert out.result.pick_distances.min() >= minimum
    # Every candidate left is closer than the minimum to the datapool or a pick.
    covered = np.concatenate([pool, cand[out.result.picks]])
    assert np.sqrt(np.maximum(2 - 2 * (cand @ covered.T).max(axis=1), 0)).max() < minimum + 1e-6
    # With TYPICALITY too: every pick is at least the minimum away, the selection stops early, and it stops
    # only once every candidate is closer than the minimum (the vendor's condition on the farthest one).
    both = strategies.select(cand, 200, selection(minimum=minimum, typicality=1.0), pool=pool)
    assert both.stop_reason == strategies.MINIMUM_DISTANCE and 0 < len(both.result.picks) < 200
    assert both.result.pick_distances.min() >= minimum
    covered = np.concatenate([pool, cand[both.result.picks]])
    assert np.sqrt(np.maximum(2 - 2 * (cand @ covered.T).max(axis=1), 0)).max() < minimum + 1e-6


def test_minimum_distance_leaves_nothing_when_the_new_data_copies_the_pool() -> None:
    x, _ = clustered()
    near = unit(x + np.random.default_rng(1).normal(scale=1e-3, size=x.shape))
    for typicality in (None, 1.0):
        out = strategies.select(near, 10, selection(minimum=0.05, typicality=typicality), pool=x)
        assert out.result.picks == [] and out.stop_reason == strategies.MINIMUM_DISTANCE
        assert 0 < out.first_distance < 0.05


def test_datapool_margin_keeps_picks_away_from_the_pool_not_from_each_other() -> None:
    x, _ = clustered()
    pool, cand = x[:50], x[50:]
    pool_d = np.sqrt(np.maximum(2 - 2 * (cand @ pool.T).max(axis=1), 0))
    minimum, margin = 0.2, float(np.quantile(pool_d, 0.5)) - 0.2  # half the candidates are too near the pool
    for typicality in (None, 1.0):
        out = strategies.select(cand, 500, selection(minimum, typicality, margin), pool=pool)
        picks = np.array(out.result.picks)
        assert out.stop_reason == strategies.MINIMUM_DISTANCE and len(picks) > 0
        assert pool_d[picks].min() >= minimum + margin
        # Among the picks the minimum distance is enough: some pairs are closer than minimum + margin.
        between = np.sqrt(np.maximum(2 - 2 * cand[picks] @ cand[picks].T, 0)) + 4 * np.eye(len(picks))
        assert between.min() >= minimum - 1e-6 and between.min() < minimum + margin
        # Every candidate left is within minimum + margin of the pool or within minimum of a pick.
        to_picks = np.sqrt(np.maximum(2 - 2 * (cand @ cand[picks].T).max(axis=1), 0))
        assert ((pool_d < minimum + margin) | (to_picks < minimum + 1e-6)).all()
    # A margin alone (no minimum distance) keeps near-copies of the pool out and picks as many as asked.
    near = strategies.select(cand, 20, selection(margin=0.3), pool=pool)
    assert len(near.result.picks) == 20 and pool_d[near.result.picks].min() >= 0.3
    # Without a datapool the margin changes nothing: exactly greedy k-center's picks.
    assert strategies.select(cand, 30, selection(margin=0.3), seed=3).result.picks == greedy_k_center(
        cand, 30, seed=3).picks


def test_datapool_margin_a_second_run_on_moved_copies_adds_nothing() -> None:
    """Run 1 leaves samples just under the minimum distance; copies that move outward cross it, so a second
    run adds samples with the minimum alone, and nothing once the margin exceeds how far the copies moved."""
    x, _ = clustered(seed=2, n=800, outliers=0)
    minimum = 0.3
    first = strategies.select(x, len(x), selection(minimum=minimum))
    pool = x[first.result.picks]
    rng = np.random.default_rng(5)
    copies = unit(x + rng.normal(scale=0.01, size=x.shape))
    moved = np.sqrt(np.maximum(2 - 2 * (copies * x).sum(axis=1), 0))
    without = strategies.select(copies, len(x), selection(minimum=minimum), pool=pool)
    assert len(without.result.picks) > 0  # the copies of samples just under the minimum cross it
    for typicality in (None, 0.5):
        again = strategies.select(copies, len(x), selection(minimum, typicality, float(moved.max())), pool=pool)
        assert again.result.picks == [] and again.stop_reason == strategies.MINIMUM_DISTANCE


def test_typicality_with_diversity_avoids_the_outliers_that_diversity_alone_chases() -> None:
    x, labels = clustered()
    pool = x[labels >= 0][:40]
    for p in (None, pool):
        alone = strategies.select(x, 30, selection(), pool=p)
        mixed = strategies.select(x, 30, selection(typicality=1.0), pool=p)
        outliers_alone = int((labels[alone.result.picks] < 0).sum())
        outliers_mixed = int((labels[mixed.result.picks] < 0).sum())
        assert outliers_alone >= 10  # plain k-center takes the 12 random directions first
        assert outliers_mixed < outliers_alone and outliers_mixed <= 1
        assert len(mixed.result.picks) == 30 and len(set(labels[mixed.result.picks]) - {-1}) == 4


def test_typicality_keeps_a_sparse_coherent_group_and_weighs_down_isolated_outliers() -> None:
    """The relative density (local outlier factor) in TYPICALITY's weight: the members of a small, sparse but
    coherent cluster (a rare class) have neighbours as sparse as themselves and keep a weight above every
    isolated outlier's, so the mix picks more of them than with the absolute density alone, and no outlier."""
    rng = np.random.default_rng(1)
    a, b = unit(rng.normal(size=(2, 32)))
    bases = rng.normal(size=(2, 3, 32)) / np.sqrt(32)
    dense = unit(a + (rng.normal(size=(400, 3)) * 0.3) @ bases[0] + rng.normal(scale=0.01, size=(400, 32)))
    rare = unit(b + (rng.normal(size=(40, 3)) * 1.5) @ bases[1] + rng.normal(scale=0.01, size=(40, 32)))
    x = np.concatenate([dense, rare, unit(rng.normal(size=(8, 32)))])
    labels = np.array([0] * 400 + [1] * 40 + [-1] * 8)
    hood = strategies.typicality_neighbours(x)
    assert hood.relative is not None and hood.density is not None
    assert hood.relative[labels == 1].mean() > hood.relative[labels < 0].max()
    assert hood.scores[labels == 1].min() > hood.scores[labels < 0].max()
    absolute = strategies.Neighbourhood(hood.density, hood.indices, hood.distances)
    empty = np.full(len(x), 4.0)
    ours = labels[strategies.weighted_greedy(x, 20, empty, hood, typicality_strength=0.5).result.picks]
    dense_only = labels[strategies.weighted_greedy(x, 20, empty, absolute, typicality_strength=0.5).result.picks]
    assert (ours == 1).sum() > (dense_only == 1).sum() and not (ours < 0).any()
    covered = strategies.select(x, 20, selection(typicality=0.5), pool=dense[:100]).result.picks
    assert (labels[covered] == 1).sum() >= 15 and not (labels[covered] < 0).any()


def test_weighted_greedy_never_picks_copies_and_stops_when_only_copies_are_left() -> None:
    x = np.eye(4, 8, dtype=np.float32)
    cand = np.concatenate([x, x[:2], x[:1]])
    out = strategies.select(cand, 7, selection(typicality=2.0))
    assert len(out.result.picks) == 4 and out.stop_reason == strategies.COPIES
    assert {tuple(cand[i]) for i in out.result.picks} == {tuple(v) for v in x}
    assert strategies.select(x[:2], 2, selection(typicality=1.0), pool=x).result.picks == []


def _balance_term(codes: np.ndarray) -> strategies.BalanceTerm:
    return strategies.BalanceTerm("weather", ["sunny", "rain"], codes, np.array([0.5, 0.5]), np.array([30, 5]), 1.0, 2)


@pytest.mark.parametrize("typicality", [True, False])
@pytest.mark.parametrize("with_pool", [True, False])
@pytest.mark.parametrize("extra", ["none", "minimum", "bonus", "balance", "preselected", "margin", "strong_bonus"])
def test_lazy_greedy_picks_exactly_what_the_reference_greedy_picks(
    typicality: bool, with_pool: bool, extra: str
) -> None:
    x, _ = clustered(seed=4, n=700, outliers=14)
    pool, cand = (x[:60], x[60:]) if with_pool else (x[:0], x)
    pool_sq = kcenter.nearest_pool_distance(cand, pool)
    rng = np.random.default_rng(5)
    kwargs: dict[str, Any] = {
        "minimum": {"minimum_distance": 0.45},
        "bonus": {"bonus": 0.7 * rng.random(len(cand))},
        "balance": {"balance": [_balance_term(rng.integers(-1, 2, size=len(cand)))]},
        "preselected": {"preselected": [7, 3]},
        "margin": {"minimum_distance": 0.25, "datapool_margin": 0.1},
        "strong_bonus": {"bonus": 20.0 * rng.random(len(cand))},  # the novelty floor decides many steps
        "none": {},
    }[extra]
    hood = strategies.typicality_neighbours(cand) if typicality else None
    ref = strategies.weighted_greedy(cand, 120, pool_sq, hood, typicality_strength=0.5, **kwargs)
    lazy = strategies.lazy_weighted_greedy(cand, 120, pool_sq, hood, typicality_strength=0.5, block_rows=64, **kwargs)
    assert lazy.result.picks == ref.result.picks and len(ref.result.picks) > 0
    # Distances agree to float32 rounding (one matrix product per block of picks vs one per pick).
    assert np.allclose(lazy.result.pick_distances, ref.result.pick_distances, rtol=0, atol=1e-6)
    assert lazy.stop_reason == ref.stop_reason and lazy.first_distance == pytest.approx(ref.first_distance, abs=1e-6)


def test_select_uses_the_lazy_greedy_for_many_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = clustered(n=400)
    small = strategies.select(x, 25, selection(minimum=0.3, typicality=0.5), pool=x[:20])
    monkeypatch.setattr(strategies, "LAZY_MIN_CANDIDATES", 100)
    monkeypatch.setattr(strategies, "LAZY_BLOCK_ROWS", 32)
    calls: list[int] = []
    lazy = strategies.lazy_weighted_greedy
    monkeypatch.setattr(strategies, "lazy_weighted_greedy", lambda *a, **kw: calls.append(1) or lazy(*a, **kw))
    large = strategies.select(x, 25, selection(minimum=0.3, typicality=0.5), pool=x[:20])
    assert calls and large.result.picks == small.result.picks


def test_typicality_counts_the_datapool_a_covered_dense_cluster_stops_attracting_picks() -> None:
    """The TYPICALITY term is the coverage a pick would bring to its neighbourhood: a dense cluster that the
    datapool already covers brings none, so the picks go to the uncovered, sparser cluster."""
    rng = np.random.default_rng(3)
    a, b = unit(rng.normal(size=(2, 16)))
    dense = unit(a + rng.normal(scale=0.02, size=(300, 16)))
    sparse = unit(b + rng.normal(scale=0.08, size=(100, 16)))
    cand = np.concatenate([dense, sparse])
    hood = strategies.typicality_neighbours(cand)
    assert hood.scores[:300].mean() > hood.scores[300:].mean()  # the dense cluster is the more typical
    empty = strategies.select(cand, 10, selection(typicality=1.0))
    assert (np.array(empty.result.picks) < 300).any()  # without a pool the dense cluster gets picks too
    pool = unit(a + rng.normal(scale=0.02, size=(300, 16)))
    covered = strategies.select(cand, 10, selection(typicality=1.0), pool=pool)
    assert (np.array(covered.result.picks) >= 300).all()
    # The term itself: the dense cluster's gain is far below the sparse one's once the pool covers it.
    objective = strategies._Objective.build(len(cand), hood, 1.0, 1.0, None, ())
    rows = np.arange(len(cand))
    gain = objective.g(strategies._capped(kcenter.nearest_pool_distance(cand, pool).astype(np.float64)), rows)
    assert gain[:300].max() < 0.2 * gain[300:].mean()


def test_typicality_scores_exact_and_hnswlib_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x, labels = clustered(n=400)
    exact = strategies.typicality_scores(x)
    assert exact.min() == 0.0 and exact.max() == 1.0
    assert exact[labels < 0].max() < exact[labels >= 0].mean()  # outliers are the least typical
    monkeypatch.setattr(strategies, "TYPICALITY_EXACT_MAX", 10)
    approx = strategies.typicality_scores(x)
    assert np.corrcoef(exact, approx)[0, 1] > 0.95
    exact_hood = strategies.typicality_neighbours(x)
    monkeypatch.setattr(strategies, "TYPICALITY_EXACT_MAX", 10)
    approx_hood = strategies.typicality_neighbours(x)
    assert approx_hood.indices.shape == exact_hood.indices.shape == (len(x), strategies.TYPICALITY_NEIGHBOURS)
    assert not (approx_hood.indices == np.arange(len(x))[:, None]).any()  # never its own neighbour
    recall = np.mean([len(set(r) & set(s)) for r, s in zip(exact_hood.indices, approx_hood.indices, strict=True)])
    assert recall > 0.9 * strategies.TYPICALITY_NEIGHBOURS
    assert np.allclose(exact_hood.distances, np.sqrt(np.maximum(2 - 2 * np.take_along_axis(
        x @ x.T, exact_hood.indices, axis=1), 0)), atol=1e-5)


@pytest.mark.parametrize(
    ("strategy_list", "message"),
    [
        ([{"strategy": {"type": "DIVERSITY"}}, {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "RANDOM"}}],
         "selection_config.strategies[1].strategy.type: must be one of DIVERSITY, TYPICALITY"),
        ([{"strategy": {"type": "TYPICALITY"}}], "selection_config.strategies: add an entry"),
        ([{"strategy": {"type": "DIVERSITY"}}, {"strategy": {"type": "DIVERSITY"}}],
         "selection_config.strategies[1].strategy.type: DIVERSITY is given twice"),
        ([{"strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": -0.1}}],
         "selection_config.strategies[0].strategy.stopping_condition_minimum_distance: must be >= 0"),
        ([{"strategy": {"type": "DIVERSITY"}}, {"strategy": {"type": "TYPICALITY", "strength": 0}}],
         "selection_config.strategies[1].strategy.strength: must be > 0"),
        ([{"strategy": {"type": "DIVERSITY"}},
          {"strategy": {"type": "TYPICALITY", "stopping_condition_minimum_distance": 0.2}}],
         "selection_config.strategies[1].strategy.stopping_condition_minimum_distance: only DIVERSITY"),
        ([{"strategy": {"type": "DIVERSITY"}}, {"strategy": {"type": "TYPICALITY", "datapool_margin": 0.1}}],
         "selection_config.strategies[1].strategy.datapool_margin: only DIVERSITY"),
        ([{"strategy": {"type": "DIVERSITY", "datapool_margin": -0.1}}],
         "selection_config.strategies[0].strategy.datapool_margin: must be >= 0"),
        ([{"input": {"type": "METADATA", "key": "brightness"}, "strategy": {"type": "DIVERSITY"}}],
         "selection_config.strategies[0].input.type: METADATA is an input of WEIGHTS, THRESHOLD and BALANCE, not "
         "of DIVERSITY"),
        ([{"input": {"type": "IMAGES"}, "strategy": {"type": "DIVERSITY"}}],
         "selection_config.strategies[0].input.type: must be one of EMBEDDINGS, METADATA"),
    ],
)
def test_wrong_strategy_configs_name_the_field(strategy_list: list, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"selection_config": {"n_samples": 3, "strategies": strategy_list}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_real_runs_with_minimum_distance_and_typicality(tmp_path: Path) -> None:
    spec = images_spec(tmp_path)
    store = DatapoolStore(LocalStorage(spec.output))
    write_images(Path(spec.input), 12)
    strategies_ = [
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 2.0, "strength": 1.0}},
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}},
    ]
    # Empty datapool: the first pick is infinitely far from it; every later one is closer than 2.0 (the
    # largest distance of unit vectors), so the run stops after one pick and says why.
    first = select_new(spec, {"selection_config": {"n_samples": 5, "strategies": strategies_}}, "run-1", 0)
    assert (first.requested, first.selected, first.stop_reason) == (5, 1, "minimum_distance")
    meta = store.read_staging("run-1")
    assert meta is not None and meta[0]["stop_reason"] == "minimum_distance" and meta[0]["requested"] == 5
    commit = commit_staged(spec, store, LocalStorage(spec.input), "run-1", run_id="run-1")
    assert commit.n_samples == 1
    assert commit.config["selection_config"]["strategies"][1]["strategy"] == {"type": "TYPICALITY", "strength": 0.5}

    # Second run on new images: nothing is 2.0 away from the datapool, so the run aborts, nothing committed.
    write_images(Path(spec.input), 4, start=12)
    second_config = {"worker_config": {"use_datapool": True},
                     "selection_config": {"n_samples": 3, "strategies": strategies_}}
    with pytest.raises(RunAborted, match="nothing left to add: no new sample is at least "
                                         "stopping_condition_minimum_distance 2 from the datapool") as info:
        select_new(spec, second_config, "run-2", 1)
    assert "\n" not in str(info.value)
    assert store.load_state().size == 1 and len(store.load_commits()) == 1 and store.staging_ids() == []

    # The datapool margin alone: no new image is 2.0 from the datapool either, and the abort says so.
    second_config["selection_config"]["strategies"] = [{"strategy": {"type": "DIVERSITY", "datapool_margin": 2.0}}]
    with pytest.raises(RunAborted, match="nothing left to add: no new sample is at least stopping_condition_minimum_"
                                         "distance 0 [+] datapool_margin 2 from the datapool"):
        select_new(spec, second_config, "run-2", 1)
    assert store.load_state().size == 1 and store.staging_ids() == []

    # Without the minimum distance the same run selects what it was asked for, TYPICALITY included.
    second_config["selection_config"]["strategies"] = [
        {"strategy": {"type": "DIVERSITY"}}, {"strategy": {"type": "TYPICALITY", "strength": 0.5}}]
    third = select_new(spec, second_config, "run-3", 2)
    assert (third.requested, third.selected, third.stop_reason) == (3, 3, "requested")
