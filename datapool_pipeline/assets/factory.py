"""Per-dataset asset graph: raw_files -> frames[shard] -> embeddings[shard] -> selection -> tag -> report.

Every asset body is a call into `datapool_pipeline.workflow`; nothing here decides anything.
"""


import warnings
from dataclasses import dataclass
from typing import Any

import dagster as dg

from datapool_pipeline.assets.run_config import DatapoolRunConfig
from datapool_pipeline.assets.runs import DATASET_TAG, run_shard_keys
from datapool_pipeline.datapool import INITIAL_TAG, DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding import load_model
from datapool_pipeline.report import build_report, write_report
from datapool_pipeline.storage import open_storage
from datapool_pipeline.storage.verify import verify_access
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline.workflow.discovery import RunPlan, check_use_datapool, plan_run
from datapool_pipeline.workflow.embeddings import embed_shard
from datapool_pipeline.workflow.frames import extract_shard_frames
from datapool_pipeline.workflow.selection import select_for_run


@dataclass
class DatasetAssets:
    spec: DatasetSpec
    partitions: dg.DynamicPartitionsDefinition
    assets: list[dg.AssetsDefinition]
    job: Any  # the unresolved asset job (define_asset_job)
    raw_files_op: str


@dataclass
class PlannedRun:
    """raw_files' output: the plan plus the validated run config, passed along the graph."""

    plan: RunPlan
    config: dict[str, Any]


def pool_name(spec: DatasetSpec) -> str:
    return f"datapool-{spec.name}"


def build_dataset_assets(spec: DatasetSpec) -> DatasetAssets:
    prefix = spec.asset_prefix
    partitions = dg.DynamicPartitionsDefinition(name=f"{prefix}__shards")
    group = prefix
    input_storage = open_storage(spec.input)
    store = DatapoolStore(open_storage(spec.output))
    kind = "videos" if spec.type == "VIDEOS" else "images"
    common: dict[str, Any] = {"group_name": group, "kinds": {"python"}, "tags": {DATASET_TAG: spec.name}}

    @dg.asset(
        key=[prefix, "raw_files"],
        description=f"The {kind} of {input_storage.display()} this run processes: files new since the last "
        "committed run (exact key + version), or all of them with process_all.",
        **common,
    )
    def raw_files(context: dg.AssetExecutionContext, config: DatapoolRunConfig) -> PlannedRun:
        run_config = config.parsed()
        if not spec.bypass_verify:  # runs launched from the UI or a sensor check access here
            verify_access(spec.name, input_storage, store.storage)
        check_use_datapool(spec, store, run_config.use_datapool)
        shards = run_shard_keys(context, partitions.name or "")
        plan = plan_run(spec, store, input_storage, shards, process_all=run_config.process_all, log=context.log.info)
        context.add_output_metadata(
            {
                "files_to_process": plan.candidates.height,
                "shards": len(shards),
                "skipped_other_type": plan.other_type.height,
                "stale_shard_members": plan.stale,
                "files_in_input": plan.inventory_files,
                "process_all": run_config.process_all,
            }
        )
        return PlannedRun(plan=plan, config=run_config.to_dict())

    # One run per backfill unless datasets.yaml asks for batches (backfill_shards_per_run).
    per_run = spec.backfill_shards_per_run
    backfill_policy = dg.BackfillPolicy.multi_run(per_run) if per_run else dg.BackfillPolicy.single_run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.asset(
            key=[prefix, "frames"],
            partitions_def=partitions,
            backfill_policy=backfill_policy,
            deps=[raw_files],
            description="Per shard: every raw file decoded once; frame manifest (index, timestamp, "
            "brightness) and per-file status. Bad files are skipped and listed, never fatal.",
            pool=pool_name(spec) + "-decode",
            **common,
        )
        def frames(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            total_frames = skipped = 0
            keys = context.partition_keys
            for i, shard in enumerate(keys, start=1):
                result = extract_shard_frames(spec, store, input_storage, shard, log=context.log.info)
                total_frames += result.frames
                skipped += len(result.skipped)
                context.log.info(
                    f"[{i}/{len(keys)}] shard {shard}: {result.frames} frames"
                    + (" (cached)" if result.cached else "")
                )
            return dg.MaterializeResult(metadata={"frames": total_frames, "files_skipped": skipped})

        @dg.asset(
            key=[prefix, "embeddings"],
            partitions_def=partitions,
            backfill_policy=backfill_policy,
            deps=[frames],
            description=f"Per shard: L2-normalised open_clip {spec.embedding.model} embeddings of every "
            "frame/image, cached per model so they are never recomputed.",
            pool=pool_name(spec) + "-embed",
            **common,
        )
        def embeddings(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            keys = context.partition_keys
            model = None
            embedded = computed = 0
            for i, shard in enumerate(keys, start=1):
                cached = store.read_shard_embeddings(shard, spec.embedding.fingerprint)
                if cached is not None:
                    embedded += cached.height
                    continue
                if model is None:
                    model = load_model(spec.embedding)
                    context.log.info(f"loaded {spec.embedding.model} on {model.device} (dim {model.dim})")
                result = embed_shard(spec, store, input_storage, model, shard, log=context.log.info)
                embedded += result.samples
                computed += result.samples
                context.log.info(f"[{i}/{len(keys)}] shard {shard}: {result.samples} embeddings")
            return dg.MaterializeResult(
                metadata={"embeddings": embedded, "computed_now": computed, "model": spec.embedding.fingerprint}
            )

    @dg.asset(
        key=[prefix, "selection"],
        deps=[embeddings],
        description="The most diverse new samples given the datapool (greedy k-center seeded with each "
        "candidate's distance to its nearest datapool sample), staged for commit.",
        pool=pool_name(spec),
        **common,
    )
    def selection(context: dg.AssetExecutionContext, raw_files: PlannedRun) -> dict[str, Any]:
        from datapool_pipeline.config import parse_run_config
        from datapool_pipeline.embedding.model import validate_embedding_spec

        validate_embedding_spec(spec.embedding)
        record = context.instance.get_run_record_by_id(context.run.run_id)
        started = record.create_timestamp if record else None
        dim = _embedding_dim(store, raw_files.plan, spec)
        summary = select_for_run(
            spec,
            store,
            raw_files.plan,
            parse_run_config(raw_files.config),
            staging_id=context.run.run_id,
            started_at=started or _now(),
            fingerprint=spec.embedding.fingerprint,
            dim=dim,
            log=context.log.info,
        )
        context.add_output_metadata(
            {
                "tag": summary.tag,
                "new_candidates": summary.candidates,
                "selected": summary.selected,
                "adopted_from_crashed_run": summary.adopted,
                "datapool_before": summary.datapool_before,
            }
        )
        return summary.as_dict()

    @dg.asset(
        key=[prefix, "tag"],
        description="Commits the selection: selected frames written as images, then samples + "
        f"embeddings + tag atomically. '{INITIAL_TAG}' is the whole datapool.",
        pool=pool_name(spec),
        **common,
    )
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
                "report": dg.MetadataValue.path(f"{report_dir}/report.pdf"),
                "report_json": dg.MetadataValue.path(f"{report_dir}/report.json"),
                "embedding_view": dg.MetadataValue.path(f"{report_dir}/embedding_view.html"),
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
        **common,
    )
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
                **{names[n]: dg.MetadataValue.path(store.storage.display(written[n])) for n in names},
                "datapool_in": body["datapool"]["size_before"],
                "datapool_out": body["datapool"]["size_after"],
                "samples_added": body["datapool"]["samples_added"],
                "coverage_max_ours": body["coverage"]["ours"]["max"],
                "coverage_max_random": body["coverage"]["random"]["max"],
                "summary": dg.MetadataValue.md(headline_markdown(body)),
            }
        )

    assets = [raw_files, frames, embeddings, selection, tag, report]
    with warnings.catch_warnings():
        # Explicit partitions_def: needed for partition-range runs of mixed graphs in Dagster 1.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        job = dg.define_asset_job(
            name=f"{prefix}_datapool",
            selection=dg.AssetSelection.assets(*assets),
            partitions_def=partitions,
            executor_def=dg.in_process_executor,
            tags={DATASET_TAG: spec.name},
            description=f"One datapool run of {spec.name}: ingest the run's shards, select, commit a tag.",
        )
    return DatasetAssets(spec, partitions, assets, job, raw_files_op=f"{prefix}__raw_files")


def _embedding_dim(store: DatapoolStore, plan: RunPlan, spec: DatasetSpec) -> int:
    for shard in plan.candidates["shard_id"].unique().to_list():
        df = store.read_shard_embeddings(shard, spec.embedding.fingerprint)
        if df is not None:
            return int(df.schema["embedding"].size)  # type: ignore[attr-defined]
    return load_model(spec.embedding).dim


def _now():  # noqa: ANN202
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
