"""The thin Dagster layer: per-dataset assets wiring the workflow functions."""

from typing import Any

__all__ = ["DatasetAssets", "build_dataset_assets"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI imports assets.resources without loading torch and the asset factory.
    if name in __all__:
        from datapool_pipeline.assets import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
