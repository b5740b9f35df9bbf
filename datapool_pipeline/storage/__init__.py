"""Datasources: local folders now; s3://, gs://, az:// plug in behind the same interface."""

from __future__ import annotations

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage.base import ObjectInfo, Storage, check_key
from datapool_pipeline.storage.local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "LocalStorage", "check_key", "open_storage"]


def open_storage(uri: str) -> Storage:
    """The storage backend for a datasource location (as resolved by datasets.yaml loading)."""
    for scheme in ("s3://", "gs://", "az://"):
        if uri.startswith(scheme):
            raise ConfigError(
                f"{uri}: {scheme} datasources are not supported by this version yet; use a local folder"
            )
    return LocalStorage(uri.removeprefix("file://"))
