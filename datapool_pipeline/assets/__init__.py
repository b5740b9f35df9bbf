"""The thin Dagster layer: per-dataset assets wiring the workflow functions."""

from datapool_pipeline.assets.factory import DatasetAssets, build_dataset_assets

__all__ = ["DatasetAssets", "build_dataset_assets"]
