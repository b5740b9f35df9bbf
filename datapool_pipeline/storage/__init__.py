"""Datasources: local folders, s3://, gs:// and az:// prefixes behind one interface."""

from __future__ import annotations

from datapool_pipeline.storage.base import ObjectInfo, Storage, StorageError, check_key
from datapool_pipeline.storage.local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "StorageError", "LocalStorage", "check_key", "open_storage"]


def open_storage(uri: str) -> Storage:
    """The storage backend for a datasource location (as resolved by datasets.yaml loading).

    Object-store clients are created on first use, so this never touches the network.
    """
    if uri.startswith("s3://"):
        from datapool_pipeline.storage.s3 import S3Storage

        return S3Storage(uri)
    if uri.startswith("gs://"):
        from datapool_pipeline.storage.gcs import GCSStorage

        return GCSStorage(uri)
    if uri.startswith("az://"):
        from datapool_pipeline.storage.azure import AzureBlobStorage

        return AzureBlobStorage(uri)
    return LocalStorage(uri.removeprefix("file://"))
