"""az://container/prefix datasources through azure-storage-blob.

Account and credentials, first match wins:
  AZURE_STORAGE_CONNECTION_STRING                                  (account, endpoint and key or SAS)
  AZURE_STORAGE_ACCOUNT_URL or AZURE_STORAGE_ACCOUNT, with one of
    AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_KEY, or DefaultAzureCredential (AZURE_CLIENT_ID/..., managed identity)
AZURE_STORAGE_ACCOUNT_URL is the blob endpoint, e.g. http://127.0.0.1:10000/devstoreaccount1 for Azurite.

`make_service_client` builds the same client from explicit values (the Dagster resources pass
per-dataset, per-side credentials that way) for `AzureBlobStorage(uri, client=...)`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage.base import ObjectInfo
from datapool_pipeline.storage.objectstore import ObjectStore
from datapool_pipeline.storage.retry import RetrySettings, retry_settings

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_ENV = "AZURE_STORAGE_ACCOUNT_URL"
ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT"
SAS_ENV = "AZURE_STORAGE_SAS_TOKEN"
KEY_ENV = "AZURE_STORAGE_KEY"
_BAD_CREDENTIALS = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}


def _account_name(url: str) -> str:
    parsed = urlparse(url)
    path = parsed.path.strip("/")
    # Emulators put the account in the path; the cloud puts it in the host name.
    return path.split("/")[0] if path else (parsed.hostname or "").split(".")[0]


def _retry_policy(settings: RetrySettings) -> Any:
    """The SDK's storage retry policy (5xx except 501/505, 408, connection and read errors; Azure Storage
    throttles with 503 ServerBusy / 500 OperationTimedOut) with our attempts and backoff instead of its
    15 s + 3^n default."""
    from azure.storage.blob import ExponentialRetry

    class _Retry(ExponentialRetry):
        def get_backoff_time(self, state: dict[str, Any]) -> float:
            return settings.backoff(max(int(state.get("count", 1)) - 1, 0))  # count is 1 before the first retry

    retries = settings.attempts - 1
    return _Retry(initial_backoff=0, retry_total=retries, retry_connect=retries, retry_read=retries,
                  retry_status=retries, random_jitter_range=0)


def service_client() -> Any:
    """A BlobServiceClient from the standard environment variables."""
    return make_service_client(
        connection_string=os.environ.get(CONNECTION_STRING_ENV),
        account_url=os.environ.get(ACCOUNT_URL_ENV),
        account=os.environ.get(ACCOUNT_ENV),
        sas_token=os.environ.get(SAS_ENV),
        account_key=os.environ.get(KEY_ENV),
    )


def make_service_client(
    *,
    connection_string: str | None = None,
    account_url: str | None = None,
    account: str | None = None,
    sas_token: str | None = None,
    account_key: str | None = None,
    credential: Any = None,
    env_prefix: str = "",
) -> Any:
    """A BlobServiceClient with our retry policy and timeouts. First match wins: a connection string; an
    account URL (or account name) with a SAS token, an account key, `credential` (e.g. a
    DefaultAzureCredential), or else DefaultAzureCredential()."""
    from azure.storage.blob import BlobServiceClient

    # 4 MiB GETs (instead of a first 32 MiB one): ffmpeg gets the first bytes of a video sooner.
    kwargs: dict[str, Any] = {"connection_timeout": 10, "read_timeout": 120,
                              "max_single_get_size": 4 * 1024 * 1024, "max_chunk_get_size": 4 * 1024 * 1024,
                              "retry_policy": _retry_policy(retry_settings())}
    conn = (connection_string or "").strip()
    if conn:
        try:
            return BlobServiceClient.from_connection_string(conn, **kwargs)
        except ValueError:
            raise ConfigError(
                f"{env_prefix}{CONNECTION_STRING_ENV} is not a valid connection string (value not shown)"
            ) from None
    account = (account or "").strip()
    url = (account_url or "").strip() or (f"https://{account}.blob.core.windows.net" if account else "")
    if not url:
        p = env_prefix
        raise ConfigError(
            f"az:// datasources need {p}{CONNECTION_STRING_ENV}, or {p}{ACCOUNT_URL_ENV} / {p}{ACCOUNT_ENV} with "
            f"{p}{SAS_ENV}, {p}{KEY_ENV} or a DefaultAzureCredential identity"
        )
    sas = (sas_token or "").strip().lstrip("?")
    key = (account_key or "").strip()
    if sas:
        from azure.core.credentials import AzureSasCredential

        credential = AzureSasCredential(sas)
    elif key:
        credential = {"account_name": account or _account_name(url), "account_key": key}
    elif credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BlobServiceClient(url, credential=credential, **kwargs)


@functools.cache
def _sdk_sends_start_from() -> bool:
    """Whether the installed azure-storage-blob knows List Blobs' startFrom (older ones: the listing
    starts at the beginning and skips up to the key on this side)."""
    from azure.storage.blob._generated.operations import ContainerOperations

    return "start_from" in inspect.signature(ContainerOperations.list_blob_flat_segment).parameters


class AzureBlobStorage(ObjectStore):
    scheme = "az://"
    client_env = (CONNECTION_STRING_ENV, ACCOUNT_URL_ENV, ACCOUNT_ENV, SAS_ENV, KEY_ENV, "AZURE_CLIENT_ID",
                  "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE")

    def _make_client(self) -> Any:
        return service_client()

    def _bind(self, client: Any) -> Any:
        return client.get_container_client(self.bucket)

    def _check_hint(self) -> str:
        names = (CONNECTION_STRING_ENV, SAS_ENV, KEY_ENV)
        return ": check " + " / ".join(self.env(n) for n in names)

    @contextlib.contextmanager
    def _call(self, action: str, key: str = "") -> Iterator[None]:
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            yield
        except ClientAuthenticationError as exc:
            code = getattr(exc, "error_code", None) or type(exc).__name__
            raise self.error(action, key, f"the credentials were rejected ({code}){self._check_hint()}") from None
        except HttpResponseError as exc:
            code = str(exc.error_code or exc.status_code)
            if code == "ContainerNotFound":
                reason = "the container does not exist (ContainerNotFound)"
            elif code in _BAD_CREDENTIALS:
                reason = f"the credentials were rejected ({code}){self._check_hint()}"
            elif exc.status_code == 403:
                reason = f"access denied ({code}): the credential lacks the permission"
                if self.env_prefix:  # say which side's variables were used
                    reason += self._check_hint()
            elif exc.status_code and (exc.status_code >= 500 or exc.status_code in (408, 429)):
                kind = "throttled" if code in ("ServerBusy", "429") or exc.status_code == 429 else "server error"
                reason = (f"gave up after {retry_settings().attempts} attempt(s): {kind} ({code}, "
                          f"HTTP {exc.status_code})")
            else:
                reason = code
            raise self.error(action, key, reason) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise self.error(
                action, key, f"gave up after {retry_settings().attempts} attempt(s): connection failed "
                f"({type(exc).__name__})"
            ) from None
        except AzureError as exc:
            raise self.error(action, key, type(exc).__name__) from None

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        with self._call("listing", prefix):
            # List Blobs has no exclusive start-after; its startFrom parameter (inclusive; sent by
            # azure-storage-blob >= 12.31, honoured by Azurite 3.37) starts the listing at the key, which is
            # dropped below, as is anything before it from a service that ignores the parameter.
            extra = {"start_from": self._name(start_after)} if start_after and _sdk_sends_start_from() else {}
            pages = self.client.list_blobs(
                name_starts_with=self._list_prefix(prefix) or None, results_per_page=self.page_size, **extra
            ).by_page()
            for page in pages:
                for blob in page:
                    key = self._key(blob.name)
                    if key is not None and (not start_after or key > start_after):
                        yield self._info(key, blob)

    @staticmethod
    def _info(key: str, blob: Any) -> ObjectInfo:
        return ObjectInfo(key, int(blob.size), str(blob.etag).strip('"'), blob.last_modified.timestamp())

    def stat(self, key: str) -> ObjectInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._call("stat", key):
            try:
                props = self.client.get_blob_client(self._name(key)).get_blob_properties()
            except ResourceNotFoundError:
                return None
        return self._info(key, props)

    def read_bytes(self, key: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        with self._call("reading", key):
            try:
                return self.client.download_blob(self._name(key)).readall()
            except ResourceNotFoundError as exc:
                if exc.error_code == "ContainerNotFound":
                    raise
                raise FileNotFoundError(self.display(key)) from None

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self._call("reading", key):
            yield from self.client.download_blob(self._name(key), offset=start, length=end - start + 1).chunks()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._call("writing", key):
            self.client.upload_blob(self._name(key), data, overwrite=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        with self._call("conditional write", key):
            try:
                # overwrite=False sends If-None-Match: *, so the service refuses the create if the blob exists.
                self.client.upload_blob(self._name(key), data, overwrite=False)
                return True
            except (ResourceExistsError, ResourceModifiedError):
                return self._holds(key, data)

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._call("deleting", key):
            try:
                self.client.delete_blob(self._name(key))
            except ResourceNotFoundError as exc:
                if exc.error_code == "ContainerNotFound":
                    raise
