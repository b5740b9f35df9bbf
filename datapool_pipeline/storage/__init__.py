"""Datasources: local folders, s3://, gs:// and az:// prefixes behind one interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datapool_pipeline.storage.base import ObjectInfo, Storage, StorageError, check_key
from datapool_pipeline.storage.local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "StorageError", "LocalStorage", "check_key", "is_object_store", "open_storage"]


OBJECT_STORE_SCHEMES = ("s3://", "gs://", "az://")


def is_object_store(uri: str) -> bool:
    return uri.startswith(OBJECT_STORE_SCHEMES)


def open_storage(
    uri: str, client: Any = None, env_prefix: str = "", client_factory: Callable[[], Any] | None = None
) -> Storage:
    """The storage backend for a datasource location (as resolved by datasets.yaml loading).

    `client` (object stores only): the SDK client to use -- a boto3 S3 client, a
    google.cloud.storage.Client or an azure BlobServiceClient; without one the backend makes its own from
    the standard environment variables; `client_factory` makes that client on first use instead.
    `env_prefix` names the prefixed credential variables in messages.
    Object-store clients are created on first use, so this never touches the network.
    """
    if uri.startswith("s3://"):
        from datapool_pipeline.storage.s3 import S3Storage

        return S3Storage(uri, client=client, env_prefix=env_prefix, client_factory=client_factory)
    if uri.startswith("gs://"):
        from datapool_pipeline.storage.gcs import GCSStorage

        return GCSStorage(uri, client=client, env_prefix=env_prefix, client_factory=client_factory)
    if uri.startswith("az://"):
        from datapool_pipeline.storage.azure import AzureBlobStorage

        return AzureBlobStorage(uri, client=client, env_prefix=env_prefix, client_factory=client_factory)
    if client is not None or client_factory is not None:
        raise ValueError(f"{uri}: a local folder takes no client")
    return LocalStorage(uri.removeprefix("file://"))
