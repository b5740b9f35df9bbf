"""Per-dataset asset graph: raw_files -> embeddings[shard] -> selection -> tag -> report.

Every asset body is a call into `datapool_pipeline.workflow`; nothing here decides anything.
"""


import functools
import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import dagster as dg
import polars as pl

from datapool_pipeline.assets import metadata, names
from datapool_pipeline.assets.executors import RUN_EXECUTOR_ENV, executor_from_env
from datapool_pipeline.assets.io_manager import datapool_io_manager
from datapool_pipeline.assets.k8s_tags import embed_step_k8s_tags
from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.assets.run_config import DatapoolRunConfig
from datapool_pipeline.assets.runs import BACKFILL_TAG, DATASET_TAG, run_shard_keys
from datapool_pipeline.datapool import INITIAL_TAG, DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding import load_model
from datapool_pipeline.errors import ConfigError, DatapoolError
from datapool_pipeline.report import build_report, write_report
from datapool_pipeline.storage.verify import verify_access
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline.workflow.discovery import RunPlan, check_use_datapool, plan_run
from datapool_pipeline.workflow.embeddings import ShardEmbeddings, cached_shard, embed_shard
from datapool_pipeline.workflow.queries import check_query_keys
from datapool_pipeline.workflow.relevant import restrict_to_relevant
from datapool_pipeline.workflow.selection import select_for_run
from datapool_pipeline.workflow.user_metadata import load_user_table


@dataclass
class DatasetAssets:
    spec: DatasetSpec
    partitions: dg.DynamicPartitionsDefinition
    assets: list[dg.AssetsDefinition]
    job: Any  # the unresolved asset job (define_asset_job)
    raw_files_op: str
    resources: dict[str, Any]


F = TypeVar("F", bound=Callable[..., Any])


def failures_as_reasons(fn: F) -> F:
    """A DatapoolError leaves the step as a dagster.Failure whose description is the one line the CLI
    prints, so the run page and GraphQL show the reason instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatapoolError as exc:
            kind = "config" if isinstance(exc, ConfigError) else "aborted"
            raise dg.Failure(description=str(exc), metadata={"reason": kind}, allow_retries=False) from None

    return wrapper  # type: ignore[return-value]


def _code_version(*parts: object) -> str:
    """Changes when what a step computes changes, so the UI marks materialized shards stale."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _storage_kind(uri: str) -> str:
    return {"s3://": "s3", "gs://": "gcs", "az://": "azure"}.get(uri[:5], "file")


def build_dataset_assets(spec: DatasetSpec) -> DatasetAssets:
    prefix = spec.asset_prefix
    partitions = dg.DynamicPartitionsDefinition(name=names.partitions_name(spec))
    group = prefix
    input_storage = storage_for(spec, "input")
    store = DatapoolStore(storage_for(spec, "output"))
    kind = "videos" if spec.type == "VIDEOS" else "images"
    io_key = names.io_manager_key(spec)
    tags = {DATASET_TAG: spec.name}
    common: dict[str, Any] = {"group_name": group, "tags": tags, "owners": list(spec.owners) or None}
    # Nested as when frames and embeddings were two assets, so shards materialized then do not turn stale.
    embeddings_version = _code_version(
        _code_version(spec.type, spec.video.frame_options(), spec.images_per_shard), spec.embedding.fingerprint
    )
    retry = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)

    @dg.asset(
        key=[prefix, "raw_files"],
        description=f"The {kind} of {input_storage.display()} this run processes: files new since the last "
        "committed run (exact key + version), or all of them with process_all.",
        kinds={"python", *(_storage_kind(entry.uri) for entry in spec.inputs)},
        io_manager_key=io_key,
        **common,
    )
    @failures_as_reasons
    def raw_files(context: dg.AssetExecutionContext, config: DatapoolRunConfig) -> dict[str, Any]:
        run_config = config.parsed()
        if not spec.bypass_verify:  # runs launched from the UI or a sensor check access here
            verify_access(spec.name, input_storage, store.storage)
        check_use_datapool(spec, store, run_config.use_datapool)
        if run_config.process_all and BACKFILL_TAG in context.run.tags:
            # A process_all backfill covers every raw file of the input, registered before or not.
            from datapool_pipeline.launch import prepare_run

            shards = prepare_run(spec, context.instance, run_config, log=context.log.info).shards
        else:
            shards = run_shard_keys(context, partitions.name or "")
        plan = plan_run(spec, store, input_storage, shards, process_all=run_config.process_all, log=context.log.info)
        plan = restrict_to_relevant(plan, run_config.selection_config, input_storage, log=context.log.info)
        check_query_keys(run_config.selection_config, input_storage)  # SIMILARITY input.keys exist
        load_user_table(spec, run_config.selection_config, input_storage)  # the metadata table, before any work
        context.add_output_metadata(
            {
                "files_to_process": plan.candidates.height,
                "shards": len(shards),
                "skipped_other_type": plan.other_type.height,
                "stale_shard_members": plan.stale,
                "files_in_input": plan.inventory_files,
                "process_all": run_config.process_all,
                "dagster/row_count": plan.candidates.height,
                **({"skipped_files": metadata.table(plan.other_type.select(
                    pl.col("raw_key").alias("key"), pl.col("media_type").alias("kind")))}
                   if plan.other_type.height else {}),
            }
        )
        return {**plan.as_record(), "config": run_config.to_dict()}

    # One run per backfill unless datasets.yaml asks for batches (backfill_shards_per_run).
    per_run = spec.backfill_shards_per_run
    backfill_policy = dg.BackfillPolicy.multi_run(per_run) if per_run else dg.BackfillPolicy.single_run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.asset(
            key=[prefix, "embeddings"],
            partitions_def=partitions,
            backfill_policy=backfill_policy,
            deps=[raw_files],
            description=f"Per shard: every raw file decoded once, at the model's input size: per-file status "
            "(bad files are skipped and listed, never fatal), frame manifest (index, timestamp, brightness, "
            f"contrast, sharpness, pixel_correlation) and L2-normalised open_clip {spec.embedding.model} "
            "embeddings of every frame/image, cached per model so they are never recomputed.",
            pool=names.pool_name(spec, "embed"),
            op_tags=embed_step_k8s_tags(),  # pod resources / GPU node under k8s_job_executor
            kinds={"python", "ffmpeg", "pytorch", "parquet"},
            code_version=embeddings_version,
            retry_policy=retry,
            **common,
        )
        @failures_as_reasons
        def embeddings(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            results, runtime = embed_shards(context.partition_keys, context.log.info)
            embedded = sum(r.samples for r in results)
            skipped = [item for r in results for item in r.skipped]
            skipped_table = pl.DataFrame(skipped, schema=["key", "reason"], orient="row")
            return dg.MaterializeResult(
                metadata={"embeddings": embedded, "computed_now": sum(r.samples for r in results if not r.cached),
                          "model": spec.embedding.fingerprint, "frames": sum(r.frames for r in results),
                          "files_skipped": len(skipped), "dagster/row_count": embedded,
                          **({"embedding_runtime": runtime} if runtime else {}),
                          **({"skipped_files": metadata.table(skipped_table)} if skipped else {})}
            )

    def embed_shards(keys: list[str], log: Callable[[str], None]) -> tuple[list[ShardEmbeddings], str | None]:
        """Each shard decoded once and embedded (workflow/embeddings.py), or read from its cache; the model
        loads only if some shard needs it. Also: the runtime that ran (embedding/runtimes.py), if any."""
        model = None
        results: list[ShardEmbeddings] = []
        for i, shard in enumerate(keys, start=1):
            result = cached_shard(store, shard, spec.embedding.fingerprint)
            if result is None:
                if model is None:
                    model = load_model(spec.embedding)
                    log(f"loaded {spec.embedding.model} on {model.device} (dim {model.dim}; runtime "
                        f"{model.runtime_note})")
                result = embed_shard(spec, store, input_storage, model, shard, log=log)
            results.append(result)
            log(f"[{i}/{len(keys)}] shard {shard}: {result.frames} frames, {result.samples} embeddings"
                + (" (cached)" if result.cached else ""))
        return results, model.runtime_note if model is not None else None

    @dg.asset(
        key=[prefix, "selection"],
        deps=[embeddings],
        description="The most diverse new samples given the datapool (greedy k-center seeded with each "
        "candidate's distance to its nearest datapool sample), staged for commit.",
        pool=names.pool_name(spec),
        kinds={"python", "numpy"},
        io_manager_key=io_key,
        **common,
    )
    @failures_as_reasons
    def selection(context: dg.AssetExecutionContext, raw_files: dict[str, Any]) -> dict[str, Any]:
        from datapool_pipeline.config import parse_run_config
        from datapool_pipeline.embedding.model import validate_embedding_spec

        validate_embedding_spec(spec.embedding)
        plan = RunPlan.from_record(raw_files)
        catch_up(context, plan)
        record = context.instance.get_run_record_by_id(context.run.run_id)
        started = record.create_timestamp if record else None
        dim = _embedding_dim(store, plan, spec)
        run_config = parse_run_config(raw_files["config"])
        selection_config = run_config.selection_config
        summary = select_for_run(
            spec,
            store,
            plan,
            run_config,
            staging_id=context.run.run_id,
            started_at=started or _now(),
            fingerprint=spec.embedding.fingerprint,
            dim=dim,
            log=context.log.info,
            input_storage=input_storage,
        )
        context.add_output_metadata(
            {
                "tag": summary.tag,
                "new_candidates": summary.candidates,
                "selected": summary.selected,
                "adopted_from_crashed_run": summary.adopted,
                "datapool_before": summary.datapool_before,
                "requested": summary.requested,
                "stop_reason": summary.stop_reason,
                **_similarity_metadata(summary.similarity),
                **{f"balance_{b['key']}": b["short"] for b in summary.balance or []},  # achieved vs target
                **_weights_metadata(summary.weights),
                **_typicality_metadata(summary.typicality),
                **({"threshold_removed": summary.threshold_removed}
                   if any(e.strategy.type == "THRESHOLD" for e in selection_config.strategies) else {}),
                **({f"filtered_{reason}": n for reason, n in summary.filtered.items()} if summary.filtered else {}),
                "dagster/row_count": summary.selected,
            }
        )
        return summary.as_dict()

    def report_entries(files: dict[str, str]) -> dict[str, dg.MetadataValue]:
        """Report files: local paths, or object URIs plus browser URLs (assets/metadata.py)."""
        env_prefix = getattr(store.storage, "env_prefix", "")
        return {k: v for name, uri in files.items() for k, v in metadata.file_entries(name, uri, env_prefix).items()}

    def catch_up(context: dg.AssetExecutionContext, plan: RunPlan) -> None:
        """Decode and embed the run's shards that no embeddings step covered (shards a process_all
        backfill registered after its partitions were fixed), and record them as materializations of
        those partitions."""
        fingerprint = spec.embedding.fingerprint
        shard_ids = plan.candidates["shard_id"].unique(maintain_order=True).to_list()
        missing = [s for s in shard_ids if not store.storage.exists(store.embeddings_key(s, fingerprint))]
        if not missing:
            return
        context.log.info(f"{len(missing)} shard(s) of this run have no embeddings yet: decoding and embedding them")
        embed_shards(missing, context.log.info)
        for shard in missing:
            context.log_event(dg.AssetMaterialization(asset_key=[prefix, "embeddings"], partition=shard,
                                                      metadata={"materialized_by": "selection (catch-up)"}))

    @dg.asset(
        key=[prefix, "tag"],
        description="Commits the selection: selected frames written as images, then samples + "
        f"embeddings + tag atomically. '{INITIAL_TAG}' is the whole datapool.",
        pool=names.pool_name(spec),
        kinds={"python", "parquet", _storage_kind(spec.output)},
        io_manager_key=io_key,
        **common,
    )
    @failures_as_reasons
    def tag(context: dg.AssetExecutionContext, selection: dict[str, Any]) -> dict[str, Any]:
        commit = commit_staged(
            spec, store, input_storage, selection["staging_id"], run_id=context.run.run_id, log=context.log.info
        )
        report_dir = store.storage.display(store.report_prefix(commit.tag))
        context.add_output_metadata(
            {
                "tag": commit.tag,
                "samples": commit.n_samples,
                "datapool_size": commit.datapool_size,
                "raw_files_processed": commit.n_processed,
                "dagster/row_count": commit.n_samples,
                "dagster/column_schema": metadata.column_schema(
                    tables.sample_schema(max(commit.embedding_dim, 1)), metadata.SAMPLE_COLUMNS),
                "picks": metadata.table(store.read_samples(commit).sort("pick_rank").select(
                    "pick_rank", "sample_id", "pool_distance", "pick_distance")),
                **report_entries({"report": f"{report_dir}/report.pdf", "report_json": f"{report_dir}/report.json",
                                  "embedding_view": f"{report_dir}/embedding_view.html"}),
                "summary": dg.MetadataValue.md(
                    f"| tag | samples | datapool |\n|---|---|---|\n| {commit.tag} | {commit.n_samples} | "
                    f"{commit.datapool_size - commit.n_samples} -> {commit.datapool_size} |"
                ),
            }
        )
        return {"tag": commit.tag, "seq": commit.seq}

    @dg.asset(
        key=[prefix, "report"],
        description="The tag's run report: report.json (the numbers), report.pdf (summary, distances ours vs "
        "random, embedding view, per-video timeline, thumbnails) and embedding_view.html (interactive).",
        kinds={"python", "pdf", "html"},
        io_manager_key=io_key,
        **common,
    )
    @failures_as_reasons
    def report(context: dg.AssetExecutionContext, tag: dict[str, Any]) -> dg.MaterializeResult:
        from datapool_pipeline.assets.run_timings import step_timings
        from datapool_pipeline.report import headline_markdown

        commit = next(c for c in store.load_commits() if c.seq == tag["seq"])
        timings = step_timings(context.instance, context.run.run_id, prefix)
        built = build_report(spec, store, commit, extra={"timings": timings})
        written = write_report(store, built, input_storage, log=context.log.info, warn=context.log.warning)
        body, names = built.body, {"pdf": "report", "json": "report_json", "html": "embedding_view"}
        return dg.MaterializeResult(
            metadata={
                "tag": commit.tag,
                **report_entries({names[n]: store.storage.display(written[n]) for n in names}),
                "datapool_in": body["datapool"]["size_before"],
                "datapool_out": body["datapool"]["size_after"],
                "samples_added": body["datapool"]["samples_added"],
                "coverage_max_ours": body["coverage"]["ours"]["max"],
                "coverage_max_random": body["coverage"]["random"]["max"],
                "summary": dg.MetadataValue.md(headline_markdown(body)),
            }
        )

    assets = [raw_files, embeddings, selection, tag, report]
    with warnings.catch_warnings():
        # Explicit partitions_def: needed for partition-range runs of mixed graphs in Dagster 1.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        job = dg.define_asset_job(
            name=names.datapool_job_name(spec),
            selection=dg.AssetSelection.assets(*assets),
            partitions_def=partitions,
            executor_def=executor_from_env(RUN_EXECUTOR_ENV, "in_process"),  # in_process: the model loads once
            tags={DATASET_TAG: spec.name},
            description=f"One datapool run of {spec.name}: ingest the run's shards, select, commit a tag.",
        )
    return DatasetAssets(
        spec, partitions, assets, job, raw_files_op=names.raw_files_op_name(spec),
        resources={io_key: datapool_io_manager(store.storage)},
    )


def _similarity_metadata(similarity: dict[str, Any] | None) -> dict[str, Any]:
    """SIMILARITY in short: the picks' cosine similarity to the queries against all new samples'."""
    if similarity is None:
        return {}
    short = {
        "similarity_queries": f"{similarity['queries']} {similarity['query']}",
        "similarity_picks_mean": similarity["picks_mean"],
        "similarity_picks_min": similarity["picks_min"],
        "similarity_picks_max": similarity["picks_max"],
        "similarity_candidates_mean": similarity["candidates_mean"],
    }
    return {name: value for name, value in short.items() if value is not None}


def _mean_vs(entry: dict[str, Any]) -> str:
    picks, candidates = entry["picks"]["mean"], (entry.get("candidates") or {}).get("mean")
    shown = "n/a" if picks is None else f"{picks:.3f}"
    return f"picks mean {shown}" + ("" if candidates is None else f" vs all new {candidates:.3f}")


def _weights_metadata(weights: list[dict[str, Any]] | None) -> dict[str, str]:
    """WEIGHTS in short: per key, the picks' mean value against all candidates'."""
    return {f"weights_{w['key']}": _mean_vs(w) for w in weights or []}


def _typicality_metadata(typicality: dict[str, Any] | None) -> dict[str, str]:
    """TYPICALITY in short: the picks' kNN density (1: the densest new sample) against all candidates'."""
    return {} if typicality is None else {"typicality_density": _mean_vs(typicality)}


def _embedding_dim(store: DatapoolStore, plan: RunPlan, spec: DatasetSpec) -> int:
    for shard in plan.candidates["shard_id"].unique().to_list():
        df = store.read_shard_embeddings(shard, spec.embedding.fingerprint)
        if df is not None:
            return int(df.schema["embedding"].size)  # type: ignore[attr-defined]
    return load_model(spec.embedding).dim


def _now():  # noqa: ANN202
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
