"""gs://bucket/prefix datasources through google-cloud-storage.

Credentials: DATAPOOL_GCS_SERVICE_ACCOUNT_JSON (the service-account JSON itself, for secret stores that
inject values rather than files), else application-default credentials (GOOGLE_APPLICATION_CREDENTIALS,
gcloud, workload identity). STORAGE_EMULATOR_HOST points the client at an emulator (anonymous access).

`make_gcs_client` builds the same client from explicit values (the Dagster resources pass per-dataset,
per-side credentials that way) for `GCSStorage(uri, client=...)`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from google.api_core.retry import Retry

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage.base import ObjectInfo, StorageError
from datapool_pipeline.storage.objectstore import CHUNK, ObjectStore
from datapool_pipeline.storage.retry import MAX_BACKOFF_SECONDS, retry_settings

SERVICE_ACCOUNT_JSON_ENV = "DATAPOOL_GCS_SERVICE_ACCOUNT_JSON"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


CREDENTIALS_FILE_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]


def gcs_credentials() -> Any | None:
    """Service-account credentials from the environment, or None for application-default ones."""
    return service_account_credentials(os.environ.get(SERVICE_ACCOUNT_JSON_ENV, ""), SERVICE_ACCOUNT_JSON_ENV)


def service_account_credentials(text: str | None, env_name: str = SERVICE_ACCOUNT_JSON_ENV) -> Any | None:
    """Credentials from the text of a service-account JSON key (None for an empty text); `env_name` is the
    variable the text came from, for the message."""
    text = (text or "").strip()
    if not text:
        return None
    from google.oauth2 import service_account

    try:
        info = json.loads(text)
        return service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{env_name} does not hold a valid service-account JSON key (value not shown)") from None


def make_gcs_client(
    *,
    project: str | None = None,
    service_account_json: str | None = None,
    credentials_file: str | None = None,
    env_prefix: str = "",
) -> Any:
    """A google.cloud.storage.Client: from a service-account JSON text, else a credentials file (any type
    google-auth loads), else application-default credentials; anonymous against STORAGE_EMULATOR_HOST."""
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
    from google.cloud import storage

    if os.environ.get(EMULATOR_ENV):
        return storage.Client(project=project or "datapool-emulator", credentials=AnonymousCredentials())
    credentials = service_account_credentials(service_account_json, f"{env_prefix}{SERVICE_ACCOUNT_JSON_ENV}")
    if credentials is None and credentials_file:
        import google.auth

        try:
            credentials, file_project = google.auth.load_credentials_from_file(credentials_file, scopes=_SCOPES)
        except (GoogleAuthError, OSError, ValueError):
            raise ConfigError(
                f"{env_prefix}{CREDENTIALS_FILE_ENV}: not a readable Google credentials file (contents not shown)"
            ) from None
        project = project or file_project
    try:
        return storage.Client(project=project or getattr(credentials, "project_id", None), credentials=credentials)
    except DefaultCredentialsError:
        raise StorageError(
            f"no Google credentials found: set {env_prefix}{SERVICE_ACCOUNT_JSON_ENV} or "
            f"{env_prefix}{CREDENTIALS_FILE_ENV} (or run where application-default credentials exist)"
        ) from None


class _AttemptsRetry(Retry):
    """api_core's Retry is bounded by time only; this one also gives up after DATAPOOL_STORAGE_RETRY_ATTEMPTS
    attempts of each wrapped call (each request, each listing page), re-raising the last error."""

    def __call__(self, func: Any, on_error: Any = None) -> Any:
        attempts = retry_settings().attempts

        def with_attempt_limit(*args: Any, **kwargs: Any) -> Any:
            failures = 0

            def count(exc: Exception) -> None:
                nonlocal failures
                failures += 1
                if on_error is not None:
                    on_error(exc)
                if failures >= attempts:
                    raise exc

            return Retry.__call__(self, func, on_error=count)(*args, **kwargs)

        return with_attempt_limit


class GCSStorage(ObjectStore):
    scheme = "gs://"
    client_env = (SERVICE_ACCOUNT_JSON_ENV, PROJECT_ENV, EMULATOR_ENV, CREDENTIALS_FILE_ENV)

    def _make_client(self) -> Any:
        try:
            return make_gcs_client(
                project=os.environ.get(PROJECT_ENV) or None,
                service_account_json=os.environ.get(SERVICE_ACCOUNT_JSON_ENV),
            )
        except StorageError as exc:
            raise self.error("connecting", "", str(exc)) from None

    @property
    def _bucket(self) -> Any:
        return self.client.bucket(self.bucket)

    def _retry(self) -> Any:
        """The retry policy for a call: the library's predicate (429, 5xx, connection errors, timeouts) and
        backoff shape, with our base delay, stopped after the configured number of attempts.

        Used for every call, plain overwrites included (a repeated whole-object PUT sends the same bytes);
        the conditional commit write is safe to repeat too (ifGenerationMatch=0)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        settings = retry_settings()
        return _AttemptsRetry(
            predicate=DEFAULT_RETRY._predicate, initial=settings.base_seconds, maximum=MAX_BACKOFF_SECONDS,
            multiplier=2.0, timeout=600.0,
        )

    @contextlib.contextmanager
    def _call(self, action: str, key: str = "") -> Iterator[None]:
        import requests
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import GoogleAuthError

        try:
            try:
                yield
            except gexc.RetryError as exc:  # the retry deadline passed: report the last failure
                if isinstance(exc.cause, Exception):
                    raise exc.cause from None
                raise
        except gexc.NotFound:
            missing = "the bucket does not exist (404)" if action == "listing" else "not found (404)"
            raise self.error(action, key, missing) from None
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise self.error(action, key, f"access denied ({exc.code})") from None
        except gexc.GoogleAPICallError as exc:
            code = int(exc.code or 0)
            if code == 429 or code >= 500:
                kind = "throttled" if code == 429 else "server error"
                attempts = retry_settings().attempts
                reason = f"gave up after {attempts} attempt(s): {kind} ({type(exc).__name__}, HTTP {code})"
            else:
                reason = f"{exc.code} {type(exc).__name__}"
            raise self.error(action, key, reason) from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                ConnectionError, TimeoutError) as exc:
            raise self.error(
                action, key, f"gave up after {retry_settings().attempts} attempt(s): connection failed "
                f"({type(exc).__name__})"
            ) from None
        except GoogleAuthError as exc:
            raise self.error(
                action, key, f"the credentials were rejected ({type(exc).__name__}): check "
                f"{self.env(SERVICE_ACCOUNT_JSON_ENV)} / {self.env(CREDENTIALS_FILE_ENV)}"
            ) from None

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        with self._call("listing", prefix):
            # startOffset is inclusive: the key itself is dropped below (as is anything before it from a
            # server that ignores the parameter, such as gcp-storage-emulator).
            blobs = self.client.list_blobs(
                self.bucket, prefix=self._list_prefix(prefix), page_size=self.page_size, retry=self._retry(),
                start_offset=self._name(start_after) if start_after else None,
            )
            for page in blobs.pages:
                for blob in page:
                    key = self._key(blob.name)
                    if key is not None and (not start_after or key > start_after):
                        yield self._info(key, blob)

    @staticmethod
    def _info(key: str, blob: Any) -> ObjectInfo:
        # md5 (or crc32c for composite objects) identifies the content, as an S3 etag does.
        version = blob.md5_hash or blob.crc32c or str(blob.generation)
        mtime = blob.updated.timestamp() if blob.updated else 0.0
        return ObjectInfo(key, int(blob.size or 0), version, mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        with self._call("stat", key):
            blob = self._bucket.get_blob(self._name(key), retry=self._retry())
        return None if blob is None else self._info(key, blob)

    def read_bytes(self, key: str) -> bytes:
        from google.api_core.exceptions import NotFound

        with self._call("reading", key):
            try:
                return self._bucket.blob(self._name(key)).download_as_bytes(retry=self._retry())
            except NotFound:
                raise FileNotFoundError(self.display(key)) from None

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self._call("reading", key):
            blob = self._bucket.blob(self._name(key))
            for offset in range(start, end + 1, CHUNK):
                last = min(offset + CHUNK - 1, end)
                yield blob.download_as_bytes(start=offset, end=last, checksum=None, retry=self._retry())

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._call("writing", key):
            self._bucket.blob(self._name(key)).upload_from_string(
                data, content_type="application/octet-stream", retry=self._retry()
            )

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        with self._call("conditional write", key):
            try:
                self._bucket.blob(self._name(key)).upload_from_string(
                    data, content_type="application/octet-stream", if_generation_match=0, retry=self._retry()
                )
                return True
            except PreconditionFailed:
                return self._holds(key, data)

    def delete(self, key: str) -> None:
        from google.api_core.exceptions import NotFound

        with self._call("deleting", key), contextlib.suppress(NotFound):
            self._bucket.blob(self._name(key)).delete(retry=self._retry())
