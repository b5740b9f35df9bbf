"""The Dagster code location: one asset graph, job and sensor per dataset in datasets.yaml."""

from __future__ import annotations

import dagster as dg

from datapool_pipeline.assets import DatasetAssets, build_dataset_assets
from datapool_pipeline.datasets import DatasetSpec, load_datasets


def build_all(specs: dict[str, DatasetSpec]) -> dict[str, DatasetAssets]:
    return {name: build_dataset_assets(spec) for name, spec in specs.items()}


def build_definitions(datasets_path: str | None = None) -> dg.Definitions:
    built = build_all(load_datasets(datasets_path))
    return dg.Definitions(
        assets=[a for b in built.values() for a in b.assets],
        jobs=[b.job for b in built.values()],
    )


def job_for_dataset(dataset: str, datasets_path: str | None = None) -> dg.JobDefinition:
    """Module-level builder so `build_reconstructable_job` can rebuild a dataset's job elsewhere."""
    specs = load_datasets(datasets_path)
    built = build_all({dataset: specs[dataset]})[dataset]
    defs = dg.Definitions(assets=built.assets, jobs=[built.job])
    return defs.resolve_job_def(built.job.name)


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by `dagster dev` / the code server (datasets from $DATAPOOL_DATASETS)."""
    return build_definitions()
