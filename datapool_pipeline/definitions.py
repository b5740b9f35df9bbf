"""The Dagster code location: one asset graph, job and sensor per dataset in datasets.yaml."""

from __future__ import annotations

from typing import Any

import dagster as dg

from datapool_pipeline.assets import DatasetAssets, build_dataset_assets
from datapool_pipeline.assets.checks import build_datapool_checks
from datapool_pipeline.assets.console import LOGGERS
from datapool_pipeline.assets.executors import BACKFILL_EXECUTOR_ENV, executor_from_env
from datapool_pipeline.assets.resources import storage_resources
from datapool_pipeline.assets.ui_launch import build_launch_job, build_launch_sensor
from datapool_pipeline.datasets import DatasetSpec, load_datasets
from datapool_pipeline.sensors import build_sensor

EXECUTOR_ENV = BACKFILL_EXECUTOR_ENV


def backfill_executor() -> Any:
    """Executor of asset backfills and UI materializations: multiprocess (default), in_process, or k8s
    (every step in its own pod, see deploy/). The datapool job has its own: DATAPOOL_RUN_EXECUTOR."""
    return executor_from_env(BACKFILL_EXECUTOR_ENV, "multiprocess")


def build_all(specs: dict[str, DatasetSpec]) -> dict[str, DatasetAssets]:
    return {name: build_dataset_assets(spec) for name, spec in specs.items()}


def build_definitions(datasets_path: str | None = None) -> dg.Definitions:
    built = build_all(load_datasets(datasets_path))
    return dg.Definitions(
        assets=[a for b in built.values() for a in b.assets],
        asset_checks=[c for b in built.values() for c in build_datapool_checks(b.spec)],
        jobs=[j for b in built.values() for j in (b.job, build_launch_job(b))],
        sensors=[s for b in built.values() for s in (build_sensor(b), build_launch_sensor(b))],
        executor=backfill_executor(),
        loggers=LOGGERS,
        resources={
            **{k: v for b in built.values() for k, v in b.resources.items()},
            **storage_resources([b.spec for b in built.values()]),  # S3/GCS/AzureBlobStorageResource per side
        },
    )


def job_for_dataset(dataset: str, datasets_path: str | None = None, content: str = "") -> dg.JobDefinition:
    """Module-level builder so `build_reconstructable_job` can rebuild a dataset's job elsewhere. `content`
    (a hash of the datasets file) only keys Dagster's cache of reconstructed jobs."""
    specs = load_datasets(datasets_path)
    built = build_all({dataset: specs[dataset]})[dataset]
    defs = dg.Definitions(
        assets=built.assets, asset_checks=build_datapool_checks(built.spec), jobs=[built.job], loggers=LOGGERS,
        resources={**built.resources, **storage_resources([built.spec])},
    )
    return defs.resolve_job_def(built.job.name)


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by `dagster dev` / the code server (datasets from $DATAPOOL_DATASETS)."""
    return build_definitions()
