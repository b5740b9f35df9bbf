"""The Dagster code location: one asset graph, job and sensor per dataset in datasets.yaml."""

from __future__ import annotations

import dagster as dg

from datapool_pipeline.assets import DatasetAssets, build_dataset_assets
from datapool_pipeline.assets.checks import build_datapool_checks
from datapool_pipeline.datasets import DatasetSpec, load_datasets
from datapool_pipeline.sensors import build_sensor


def build_all(specs: dict[str, DatasetSpec]) -> dict[str, DatasetAssets]:
    return {name: build_dataset_assets(spec) for name, spec in specs.items()}


def build_definitions(datasets_path: str | None = None) -> dg.Definitions:
    built = build_all(load_datasets(datasets_path))
    return dg.Definitions(
        assets=[a for b in built.values() for a in b.assets],
        asset_checks=[c for b in built.values() for c in build_datapool_checks(b.spec)],
        jobs=[b.job for b in built.values()],
        sensors=[build_sensor(b) for b in built.values()],
    )


def job_for_dataset(dataset: str, datasets_path: str | None = None) -> dg.JobDefinition:
    """Module-level builder so `build_reconstructable_job` can rebuild a dataset's job elsewhere."""
    specs = load_datasets(datasets_path)
    built = build_all({dataset: specs[dataset]})[dataset]
    defs = dg.Definitions(assets=built.assets, asset_checks=build_datapool_checks(built.spec), jobs=[built.job])
    return defs.resolve_job_def(built.job.name)


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by `dagster dev` / the code server (datasets from $DATAPOOL_DATASETS)."""
    return build_definitions()
