"""Selection for one run: the most diverse new samples given the datapool, staged for commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl

from datapool_pipeline.config import RunConfig
from datapool_pipeline.datapool import INITIAL_TAG, DatapoolState, DatapoolStore, tables
from datapool_pipeline.datapool.pool_index import load_pool_index
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding import EmbeddingModel, load_model
from datapool_pipeline.errors import RunAborted
from datapool_pipeline.media.kinds import NOT_REGULAR_FILE, NOT_REGULAR_FILE_REASON, UNSAFE_KEY_REASON
from datapool_pipeline.selection import kcenter, metadata, samples_to_select, strategies
from datapool_pipeline.selection import record as selection_record
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow import queries, user_metadata
from datapool_pipeline.workflow.discovery import RunPlan, check_use_datapool, unprocessed
from datapool_pipeline.workflow.faults import fault_point
from datapool_pipeline.workflow.progress import Log, no_log

_ID = ["raw_key", "raw_version", "frame_index"]


@dataclass
class SelectionSummary:
    staging_id: str
    tag: str
    base_seq: int
    candidates: int
    selected: int
    adopted: int
    datapool_before: int
    requested: int = 0
    """How many picks the run asked for; `selected` is smaller when only exact copies were left or the
    minimum distance stopped the selection."""
    stop_reason: str = strategies.REQUESTED
    """Why the selection ended: requested, only_copies_left or minimum_distance."""
    similarity: dict[str, Any] | None = None
    """SIMILARITY: the picks' cosine similarity to the queries (workflow/queries.py similarity_summary)."""
    filtered: dict[str, int] | None = None
    """Samples the dataset's degenerate-frame filter (datasets.yaml filters) dropped, by reason (black,
    blurred, noise), before THRESHOLD and selection; None when no filter is on."""
    threshold_removed: int = 0
    """New samples that THRESHOLD strategies removed before the greedy selection (`candidates` excludes them)."""
    balance: list[dict[str, Any]] | None = None
    """BALANCE: per entry, the target vs the shares before the run and achieved with the picks
    (workflow/user_metadata.py balance_summary); None without BALANCE."""
    weights: list[dict[str, Any]] | None = None
    """WEIGHTS: per entry, the key's values over the picks vs over the candidates
    (selection/record.py weights_summary); None without WEIGHTS."""
    typicality: dict[str, Any] | None = None
    """TYPICALITY: the picks' kNN density vs the candidates' (selection/record.py typicality_summary)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tag_name(started_at: datetime, existing: list[str]) -> str:
    """The run's UTC start time; a suffix only if a tag of that second already exists."""
    base = started_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    name, n = base, 1
    while name in existing or name == INITIAL_TAG:
        n += 1
        name = f"{base}-{n}"
    return name


def load_candidate_embeddings(
    store: DatapoolStore, candidates: pl.DataFrame, fingerprint: str, dim: int
) -> pl.DataFrame:
    parts = []
    for shard in candidates["shard_id"].unique(maintain_order=True).to_list():
        df = store.read_shard_embeddings(shard, fingerprint)
        if df is None:
            raise RunAborted(
                f"embeddings of shard {shard} for model {fingerprint} are missing: materialize the "
                "embeddings asset for this shard first (or run the whole job)"
            )
        parts.append(tables.with_embedding_metadata(df))  # older shards: built-in metadata null
    if not parts:
        return pl.DataFrame(schema={"raw_key": pl.String, "raw_version": pl.String, "frame_index": pl.Int64,
                                    "timestamp_s": pl.Float64, "embedding": pl.Array(pl.Float32, dim),
                                    **tables.EMBEDDING_METADATA_SCHEMA})
    emb = pl.concat(parts, how="vertical")
    return emb.join(candidates.select(["raw_key", "raw_version"]), on=["raw_key", "raw_version"], how="semi")


def pool_embeddings(
    spec: DatasetSpec, store: DatapoolStore, state: DatapoolState, fingerprint: str, dim: int
) -> tuple[np.ndarray, list[str]]:
    """The datapool's embeddings in the current model's space, and the sample id of each row."""
    if state.size == 0:
        return np.empty((0, dim), np.float32), []
    if state.commits[-1].embedding_model == fingerprint:
        return tables.embeddings_matrix(state.samples, dim), state.samples["sample_id"].to_list()
    # The dataset's model changed: use the pool samples' shards re-embedded with the new model.
    registry = store.read_registry()
    pool = state.samples.select(["sample_id", *_ID])
    shards = registry.join(pool.select(["raw_key", "raw_version"]).unique(), on=["raw_key", "raw_version"], how="semi")
    parts = [store.read_shard_embeddings(s, fingerprint) for s in shards["shard_id"].unique().to_list()]
    parts = [tables.with_embedding_metadata(p) if p is not None else None for p in parts]
    found = pl.concat([p for p in parts if p is not None]) if any(p is not None for p in parts) else None
    matched = pool.join(found, on=_ID, how="inner", maintain_order="left") if found is not None else pool.clear()
    if matched.height < pool.height:
        raise RunAborted(
            f"the embedding model changed from {state.commits[-1].embedding_model} to {fingerprint} and "
            f"{pool.height - matched.height} datapool samples have no embedding in the new model yet: "
            "backfill the embeddings asset over all shards, then run again"
        )
    return tables.embeddings_matrix(matched, dim), matched["sample_id"].to_list()


def select_for_run(
    spec: DatasetSpec,
    store: DatapoolStore,
    plan: RunPlan,
    run_config: RunConfig,
    *,
    staging_id: str,
    started_at: datetime,
    fingerprint: str,
    dim: int,
    log: Log = no_log,
    input_storage: Storage | None = None,
    query_model: Callable[[], EmbeddingModel] | None = None,
) -> SelectionSummary:
    """`input_storage` holds SIMILARITY's query images (input.keys); `query_model` gives the model that
    embedded the candidates (default: load_model(spec.embedding)), for SIMILARITY's queries. The dataset's
    metadata table (datasets.yaml metadata) is read through `input_storage` too, and checked first."""
    check_use_datapool(spec, store, run_config.use_datapool)
    table = user_metadata.load_user_table(spec, run_config.selection_config, input_storage)
    state = store.load_state()
    if not run_config.process_all:
        # Another run may have committed some of these files since this run's raw_files step.
        still_new = unprocessed(plan.candidates, state.processed)
        if still_new.height == 0:
            raise RunAborted(
                f"the {plan.candidates.height} raw file(s) of this run were processed by another run that "
                "committed first; nothing to do"
            )
        plan = RunPlan(still_new, plan.other_type, plan.stale, plan.inventory_files)
    emb = load_candidate_embeddings(store, plan.candidates, fingerprint, dim)
    ids = tables.sample_ids(spec.type, emb["raw_key"].to_list(), emb["raw_version"].to_list(),
                            emb["frame_index"].to_list())
    emb = emb.with_columns(pl.Series("sample_id", ids, dtype=pl.String))
    in_pool = emb.join(state.samples.select("sample_id"), on="sample_id", how="semi").height
    new = emb.join(state.samples.select("sample_id"), on="sample_id", how="anti").unique(
        subset="sample_id", keep="first", maintain_order=True
    ).sort(["raw_key", "raw_version", "frame_index"])
    if new.height == 0:
        raise RunAborted(
            f"nothing left to add: the {emb.height} candidate samples of {plan.candidates.height} raw "
            f"file(s) are all in the datapool already ({in_pool}) or could not be decoded"
        )
    if table is not None:
        new = table.attach(new)
    new, filtered = _apply_dataset_filters(spec, new, log)
    new, thresholds = _apply_metadata_thresholds(store, plan, new, run_config, fingerprint, log, table)
    k = samples_to_select(new.height, run_config.n_samples, run_config.proportion_samples)
    if run_config.n_samples is not None and run_config.n_samples > new.height:
        log(f"n_samples is {run_config.n_samples} but only {new.height} new samples exist: selecting all")
    candidates = tables.embeddings_matrix(new, dim)
    pool, pool_ids = pool_embeddings(spec, store, state, fingerprint, dim)
    log(f"selecting {k} of {new.height} new samples against a datapool of {len(pool)} "
        f"(strategies: {', '.join(e.strategy.type for e in run_config.selection_config.strategies)})")
    # Large pools are seeded with hnswlib: the index over the datapool is kept between runs.
    exact_max_pairs = kcenter.EXACT_SEEDING_MAX_PAIRS
    index = None
    if len(pool) and len(candidates) * len(pool) > exact_max_pairs:
        index = load_pool_index(store, pool, pool_ids, fingerprint, log=log)
    # With the index, the selector reads the pool's vectors from it (not held twice).
    seeding = {"pool": None if index is not None else pool, "pool_index": index,
               "exact_max_pairs": exact_max_pairs, "seed": spec.seed}
    del pool
    similar = _similarity_scores(spec, run_config, candidates, fingerprint, input_storage, query_model, log)
    if similar is not None:
        seeding["similarity"] = similar[1]
    selection = run_config.selection_config
    seeding["metadata_bonus"] = metadata.weights_bonus(new, selection)  # WEIGHTS (None without)
    balance_terms = user_metadata.balance_terms(selection, new, state.samples, table)
    seeding["balance"] = balance_terms
    for term in balance_terms:
        without = int((term.codes < 0).sum())
        log(f"BALANCE {term.key}: datapool counts {dict(zip(term.categories, term.pool_counts.tolist(), strict=True))}"
            + (f"; {without} of {new.height} new samples have no value" if without else ""))
    outcome = strategies.select(candidates, k, selection, **seeding)
    adopted = 0
    orphans = _orphans(spec, store, state, new)
    if orphans and not set(orphans) <= set(outcome.result.picks):
        # Frames uploaded by a crashed run: keep them (they count towards k) and pick the rest.
        adopted = min(len(orphans), k)
        log(f"adopting {adopted} frame(s) uploaded by an earlier run that crashed before committing")
        outcome = strategies.select(candidates, k, selection, preselected=orphans, **seeding)
    result = outcome.result
    diversity = selection.strategy("DIVERSITY")
    minimum = diversity.stopping_condition_minimum_distance if diversity is not None else None
    margin = (diversity.datapool_margin if diversity is not None else None) or 0.0
    if len(result.picks) < k:
        if not result.picks:
            if outcome.stop_reason == strategies.MINIMUM_DISTANCE:
                rule = f"stopping_condition_minimum_distance {minimum or 0:g}"
                if margin:
                    rule += f" + datapool_margin {margin:g}"
                raise RunAborted(
                    f"nothing left to add: no new sample is at least {rule} from the datapool "
                    f"(the best of the {new.height} is at {outcome.first_distance:.4f})"
                )
            raise RunAborted(
                f"nothing left to add: the {new.height} new sample(s) are exact copies of datapool samples"
            )
        if outcome.stop_reason == strategies.MINIMUM_DISTANCE:
            rule = (f"stopping_condition_minimum_distance {minimum or 0:g} to these picks or than "
                    f"{(minimum or 0) + margin:g} (+ datapool_margin {margin:g}) to the datapool" if margin else
                    f"stopping_condition_minimum_distance {minimum:g} to the datapool or these picks")
            log(f"selected {len(result.picks)} of the {k} requested: every other new sample is closer than {rule}")
        else:
            log(f"selected {len(result.picks)} of the {k} requested: the other new samples are exact copies of "
                "datapool samples or of these picks, which would add nothing")
    similarity = None
    if similar is not None:
        entry = queries.similarity_entry(selection)
        assert entry is not None
        similarity = queries.similarity_summary(entry[1], similar[2], similar[0], list(result.picks))
        log(queries.similarity_line(similarity))
    balance = [user_metadata.balance_summary(t, list(result.picks)) for t in balance_terms] or None
    for line in balance or []:
        log(user_metadata.balance_line(line))
    tag = tag_name(started_at, state.tags)
    picks = new[result.picks].with_columns(
        pl.lit(tag).alias("tag"),
        pl.Series("pick_rank", np.arange(len(result.picks)), dtype=pl.Int64),
        pl.Series("pick_distance", result.pick_distances.astype(np.float32)),
        pl.Series("pool_distance", result.pool_distances[result.picks].astype(np.float32)),
    ).select(list(tables.sample_schema(dim)))
    processed = _processed_rows(plan, store, tag, spec.type)
    weights = selection_record.weights_summary(new, list(result.picks), selection)
    typicality = selection_record.typicality_summary(outcome.density, list(result.picks))
    meta = {
        "staging_id": staging_id,
        "tag": tag,
        "base_seq": state.head_seq,
        "datapool_before": state.size,
        "candidates": new.height,
        "candidates_in_pool": in_pool,
        "selected": picks.height,
        "adopted": adopted,
        "requested": k,
        "stop_reason": outcome.stop_reason,
        "first_distance": selection_record.finite(outcome.first_distance),  # DIVERSITY (for the report)
        "weights": weights,  # WEIGHTS (report)
        **({"typicality": typicality} if typicality is not None else {}),
        **({"similarity": similarity} if similarity is not None else {}),
        "thresholds": [t.as_dict() for t in thresholds],
        **({"balance": balance} if balance is not None else {}),
        **({"filtered": filtered} if filtered is not None else {}),
        "strategies": [e.strategy.type for e in selection.strategies],
        "embedding_model": fingerprint,
        "embedding_dim": dim,
        "config": run_config.to_dict(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.write_staging(staging_id, meta, picks, processed)
    fault_point("after_selection")
    log(f"selected {picks.height} samples for tag {tag} (datapool {state.size} -> {state.size + picks.height})")
    return SelectionSummary(
        staging_id, tag, state.head_seq, new.height, picks.height, adopted, state.size, k, outcome.stop_reason,
        threshold_removed=sum(t.removed for t in thresholds), filtered=filtered,
        similarity=similarity, balance=balance, weights=weights or None, typicality=typicality,
    )


def _similarity_scores(
    spec: DatasetSpec,
    run_config: RunConfig,
    candidates: np.ndarray,
    fingerprint: str,
    input_storage: Storage | None,
    query_model: Callable[[], EmbeddingModel] | None,
    log: Log,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """SIMILARITY's scores of the candidates: raw max cosine similarity to the queries, normalised to [0, 1],
    and the number of queries; None when SIMILARITY is not configured."""
    found = queries.similarity_entry(run_config.selection_config)
    if found is None:
        return None
    position, entry = found
    model = query_model() if query_model is not None else load_model(spec.embedding)
    if model.fingerprint != fingerprint:
        raise RunAborted(
            f"SIMILARITY queries would be embedded by {model.fingerprint}, but the candidates by {fingerprint}"
        )
    embedded = queries.query_embeddings(spec, entry, position, model, input_storage)
    log(f"SIMILARITY: {len(embedded)} {'text' if entry.input.text is not None else 'image'} quer(ies) embedded "
        f"by {model.fingerprint}")
    raw, normalised = strategies.similarity_scores(candidates, embedded)
    return raw, normalised, len(embedded)


def _apply_dataset_filters(
    spec: DatasetSpec, new: pl.DataFrame, log: Log
) -> tuple[pl.DataFrame, dict[str, int] | None]:
    """datasets.yaml `filters`: drop black / blurred / noise new samples by their built-in metadata,
    counted by reason (the first that applies, in that order). Samples without the metadata are kept."""
    if not spec.filters.enabled:
        return new, None
    drop, counts, unknown = metadata.degenerate_frames(new, spec.filters)
    log("degenerate-frame filter: dropped " + ", ".join(f"{n} {r}" for r, n in counts.items())
        + f" of {new.height} new samples" + (f" ({unknown} lack a checked value: kept)" if unknown else ""))
    if drop.all():
        raise RunAborted(
            f"nothing left to add: the degenerate-frame filter (datasets.yaml filters) dropped all {new.height} "
            "new samples (" + ", ".join(f"{n} {r}" for r, n in counts.items()) + ")"
        )
    return new.filter(pl.Series(~drop)), counts


def _apply_metadata_thresholds(
    store: DatapoolStore,
    plan: RunPlan,
    new: pl.DataFrame,
    run_config: RunConfig,
    fingerprint: str,
    log: Log,
    table: user_metadata.UserTable | None = None,
) -> tuple[pl.DataFrame, list[metadata.ThresholdOutcome]]:
    """The new samples that pass the THRESHOLD strategies (METADATA inputs), and what each removed.

    Shards embedded before the built-in metadata existed read it as null: a THRESHOLD removes such samples
    and WEIGHTS scores them 0; if no candidate has a configured key's value the run aborts before any work.
    """
    selection = run_config.selection_config
    if not any(e.strategy.type in ("WEIGHTS", "THRESHOLD") for e in selection.strategies):
        return new, []
    unknown = metadata.missing_metadata_keys(new, selection)
    from_table = [k for k in unknown if k not in metadata.BUILTIN_KEYS]
    if from_table and table is not None:
        raise RunAborted(
            f"key(s) {', '.join(from_table)} of the metadata table {table.file} have no value for any of the "
            f"{new.height} new samples: the table has no row (or a null) for their raw_key"
            + ("/frame_index" if table.by_frame else "")
        )
    old = [s for s in plan.candidates["shard_id"].unique(maintain_order=True).to_list()
           if (df := store.read_shard_embeddings(s, fingerprint)) is not None and metadata.lacks_metadata(df)]
    if unknown:
        where = (f"shard(s) {', '.join(old[:5])}{' ...' if len(old) > 5 else ''} were embedded before the built-in "
                 "metadata existed: delete their embeddings cache "
                 f"({store.embeddings_key(old[0], fingerprint)}) and run again to re-embed them"
                 if old else "the embedding pass found no value for them (e.g. timestamp/duration of images)")
        raise RunAborted(
            f"METADATA key(s) {', '.join(unknown)} have no value for any of the {new.height} new samples: {where}"
        )
    if old:
        log(f"{len(old)} shard(s) were embedded before the built-in metadata existed: their samples' metadata "
            "is null (THRESHOLD removes them, WEIGHTS scores them 0); delete their embeddings cache to re-embed")
    passed, outcomes = metadata.apply_thresholds(new, selection)
    for t in outcomes:
        log(f"THRESHOLD {t.key} {t.operation} {t.threshold:g}: removed {t.removed} candidate(s)"
            + (f" ({t.unknown} without a value)" if t.unknown else ""))
    if outcomes and passed.height == 0:
        raise RunAborted(
            f"nothing left to add: the THRESHOLD strategies removed all {new.height} new samples ("
            + ", ".join(f"{t.key} {t.operation} {t.threshold:g}: {t.removed}" for t in outcomes) + ")"
        )
    return passed, outcomes


def _orphans(spec: DatasetSpec, store: DatapoolStore, state: DatapoolState, new: pl.DataFrame) -> list[int]:
    """Indices into `new` of frames that a crashed run uploaded but never committed (pick order)."""
    if spec.type != "VIDEOS":
        return []
    staged: list[pl.DataFrame] = []
    for sid in store.staging_ids():
        entry = store.read_staging(sid)
        if entry is not None and entry[0]["base_seq"] <= state.head_seq:
            staged.append(entry[1].select(["sample_id", "pick_rank"]).with_columns(pl.lit(sid).alias("sid")))
    if not staged:
        return []
    frames = pl.concat(staged).sort(["sid", "pick_rank"]).unique("sample_id", keep="first", maintain_order=True)
    uploaded = [s for s in frames["sample_id"].to_list() if store.storage.exists(s)]
    position = {s: i for i, s in enumerate(new["sample_id"].to_list())}
    return [position[s] for s in uploaded if s in position]


def _processed_rows(plan: RunPlan, store: DatapoolStore, tag: str, dataset_type: str) -> pl.DataFrame:
    statuses = []
    for shard in plan.candidates["shard_id"].unique().to_list():
        files = store.read_shard_files(shard)
        if files is not None:
            statuses.append(files)
    status = pl.concat(statuses) if statuses else tables.empty(tables.FILE_STATUS_SCHEMA)
    rows = plan.candidates.drop("shard_id").join(
        status.select(["raw_key", "raw_version", "status", "error", "frames"]), on=["raw_key", "raw_version"],
        how="left",
    ).with_columns(pl.col("status").fill_null("skipped"), pl.col("frames").fill_null(0))
    other = plan.other_type.with_columns(
        pl.lit("skipped").alias("status"),
        pl.when(pl.col("media_type") == "OTHER")
        .then(pl.lit("not an image or video file"))
        .when(pl.col("media_type") == "UNSAFE_KEY")
        .then(pl.lit(UNSAFE_KEY_REASON))
        .when(pl.col("media_type") == NOT_REGULAR_FILE)
        .then(pl.lit(NOT_REGULAR_FILE_REASON))
        .otherwise(pl.format("{} file in a {} dataset", pl.col("media_type"), pl.lit(dataset_type)))
        .alias("error"),
        pl.lit(0, dtype=pl.Int64).alias("frames"),
    )
    return pl.concat([rows, other], how="diagonal_relaxed").with_columns(pl.lit(tag).alias("tag")).select(
        list(tables.PROCESSED_SCHEMA)
    )
