"""Grow a curated image/video dataset from a bucket that keeps filling up.

`from datapool_pipeline import Datapool` is the Python API (datapool_pipeline/api.py).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Datapool", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import datapool_pipeline` (the Dagster code location, the CLI) stays light.
    if name == "Datapool":
        from datapool_pipeline.api import Datapool

        return Datapool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
