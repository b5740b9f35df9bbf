"""s3://bucket/prefix datasources through boto3 (AWS S3 and S3-compatible stores: MinIO, Ceph, R2).

Credentials: boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE,
instance or task roles); AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for a custom endpoint. Delegated access:
DATAPOOL_S3_ROLE_ARN (+ DATAPOOL_S3_EXTERNAL_ID) is assumed with STS on top of those credentials, and the
temporary credentials are refreshed by botocore before they expire.

`make_s3_client` builds the same client from explicit values (keys, endpoint, region, role) instead of
the environment: the Dagster resources (assets/resources.py) use it for per-dataset, per-side credentials,
and pass the client to `S3Storage(uri, client=...)`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from datapool_pipeline.storage.base import ObjectInfo, StorageError
from datapool_pipeline.storage.objectstore import ObjectStore
from datapool_pipeline.storage.retry import retry_settings

ROLE_ARN_ENV = "DATAPOOL_S3_ROLE_ARN"
EXTERNAL_ID_ENV = "DATAPOOL_S3_EXTERNAL_ID"
SESSION_NAME_ENV = "DATAPOOL_S3_ROLE_SESSION_NAME"
DURATION_ENV = "DATAPOOL_S3_ROLE_DURATION_SECONDS"
ADDRESSING_ENV = "DATAPOOL_S3_ADDRESSING_STYLE"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException",
               "RequestLimitExceeded", "BandwidthLimitExceeded", "429"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "InvalidToken",
                    "ExpiredToken", "TokenRefreshRequired", "AuthFailure"}


def _client_error_reason(exc: Any, env_prefix: str = "") -> str:
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "error"))
    if getattr(exc, "operation_name", "") == "AssumeRole":
        return (f"assuming the role in {env_prefix}{ROLE_ARN_ENV} was refused ({code}): check the role ARN, "
                f"its trust policy and {env_prefix}{EXTERNAL_ID_ENV}")
    if code == "NoSuchBucket":
        return "the bucket does not exist (NoSuchBucket)"
    if code in _BAD_CREDENTIALS:
        return (f"the credentials were rejected ({code}): check {env_prefix}AWS_ACCESS_KEY_ID / "
                f"{env_prefix}AWS_SECRET_ACCESS_KEY")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        # With prefixed credentials, say which side's key was refused.
        return f"access denied ({code})" + (f" for the key in {env_prefix}AWS_ACCESS_KEY_ID" if env_prefix else "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _THROTTLING or status >= 500:
        attempts = int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0) + 1
        kind = "throttled" if code in _THROTTLING or status == 429 else "server error"
        return f"gave up after {attempts} attempt(s): {kind} ({code}, HTTP {status})"
    return f"{code}: {err.get('Message', '')}".strip().rstrip(":")


class S3Storage(ObjectStore):
    scheme = "s3://"
    client_env = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                  "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                  "AWS_SHARED_CREDENTIALS_FILE", ROLE_ARN_ENV, EXTERNAL_ID_ENV, SESSION_NAME_ENV, DURATION_ENV,
                  ADDRESSING_ENV)

    def _make_client(self) -> Any:
        # Keys, profile and endpoint: boto3 reads them from the environment itself.
        duration = os.environ.get(DURATION_ENV, "").strip()
        return make_s3_client(
            role_arn=os.environ.get(ROLE_ARN_ENV, "").strip() or None,
            external_id=os.environ.get(EXTERNAL_ID_ENV, "").strip() or None,
            session_name=os.environ.get(SESSION_NAME_ENV) or None,
            duration_seconds=duration or None,
            addressing_style=os.environ.get(ADDRESSING_ENV) or None,
        )

    @contextlib.contextmanager
    def _call(self, action: str, key: str = "") -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except ClientError as exc:
            raise self.error(action, key, _client_error_reason(exc, self.env_prefix)) from None
        except NoCredentialsError:
            raise self.error(
                action, key, f"no AWS credentials found: set {self.env('AWS_ACCESS_KEY_ID')} and "
                f"{self.env('AWS_SECRET_ACCESS_KEY')} (or a profile / instance role)"
            ) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            # The message holds the endpoint URL only; the class says what happened (reset, timeout, refused).
            raise self.error(
                action, key, f"gave up after {retry_settings().attempts} attempt(s): connection failed "
                f"({type(exc).__name__})"
            ) from None
        except BotoCoreError as exc:
            raise self.error(action, key, f"{type(exc).__name__}: {exc}") from None

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        with self._call("listing", prefix):
            # StartAfter: the service starts the listing after that name (S3 and the S3-compatible stores).
            extra = {"StartAfter": self._name(start_after)} if start_after else {}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._list_prefix(prefix), PaginationConfig={"PageSize": self.page_size},
                **extra,
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = self._key(obj["Key"])
                    if key is not None and (not start_after or key > start_after):
                        yield ObjectInfo(key, int(obj["Size"]), obj["ETag"].strip('"'),
                                         obj["LastModified"].timestamp())

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        with self._call("stat", key):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                    return None
                raise
        return ObjectInfo(key, int(head["ContentLength"]), head["ETag"].strip('"'), head["LastModified"].timestamp())

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        with self._call("reading", key):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                    raise FileNotFoundError(self.display(key)) from None
                raise

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self._call("reading", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key), Range=f"bytes={start}-{end}")["Body"]
            try:
                yield from body.iter_chunks(1024 * 1024)
            finally:
                body.close()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._call("writing", key):
            self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        with self._call("conditional write", key):
            for attempt in range(6):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data, IfNoneMatch="*")
                    return True
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code"))
                    if code in ("PreconditionFailed", "412"):
                        return self._holds(key, data)
                    # 409: a concurrent conditional write to this key is in flight; S3 asks to retry.
                    if code != "ConditionalRequestConflict" or attempt == 5:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        raise StorageError(f"{self.display(key)}: conditional write did not settle")  # pragma: no cover

    def delete(self, key: str) -> None:
        with self._call("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))


def make_s3_client(
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    role_arn: str | None = None,
    external_id: str | None = None,
    session_name: str | None = None,
    duration_seconds: str | int | None = None,
    addressing_style: str | None = None,
    attempts: int | None = None,
    env_prefix: str = "",
    use_ssl: bool = True,
    verify: bool | str | None = None,
) -> Any:
    """A boto3 S3 client with our retry, timeout and pool settings.

    Values left None come from boto3's own chain (environment, profile, instance role), except with an
    `env_prefix`: then the caller resolved the prefixed variables, and the standard endpoint variables
    (AWS_ENDPOINT_URL...) are ignored so that a prefixed side never talks to another side's endpoint.
    `role_arn` is assumed with STS on top of the credentials (refreshed before expiry)."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session(profile=profile or None)
    if region:
        core.set_config_variable("region", region)
    elif env_prefix or not (os.environ.get("AWS_REGION") or core.get_config_variable("region")):
        core.set_config_variable("region", "us-east-1")
    if access_key_id or secret_access_key:
        if not (access_key_id and secret_access_key):
            missing = "AWS_SECRET_ACCESS_KEY" if access_key_id else "AWS_ACCESS_KEY_ID"
            raise StorageError(f"{env_prefix}{missing} is not set (the other half of the key pair is)")
        core.set_credentials(access_key_id, secret_access_key, session_token or None)
    if role_arn:
        core._credentials = _assume_role_credentials(  # botocore's documented hook
            core, role_arn, external_id, session_name, duration_seconds, env_prefix
        )
    options: dict[str, Any] = {}
    if env_prefix:
        options["ignore_configured_endpoint_urls"] = True
    config = Config(
        # total_max_attempts counts the first request; botocore's "max_attempts" counts retries only.
        retries={"mode": "standard", "total_max_attempts": attempts or retry_settings().attempts},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=16,
        s3={"addressing_style": addressing_style or "auto"},
        **options,
    )
    return boto3.session.Session(botocore_session=core).client(
        "s3", config=config, endpoint_url=endpoint_url or None, use_ssl=use_ssl, verify=verify
    )


def _assume_role_credentials(
    core: Any,
    role_arn: str,
    external_id: str | None,
    session_name: str | None,
    duration: str | int | None,
    env_prefix: str = "",
) -> Any:
    """STS AssumeRole credentials (with the external id) that botocore refreshes before expiry."""
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    source = core.get_credentials()
    if source is None:
        raise StorageError(
            f"{env_prefix}{ROLE_ARN_ENV} is set but there are no source credentials to assume it with: set "
            f"{env_prefix}AWS_ACCESS_KEY_ID and {env_prefix}AWS_SECRET_ACCESS_KEY (or a profile / instance role)"
        )
    extra: dict[str, Any] = {"RoleSessionName": session_name or "datapool"}
    if external_id:
        extra["ExternalId"] = external_id
    if duration not in (None, ""):
        text = str(duration).strip()
        if not text.isdigit() or not 900 <= int(text) <= 43200:
            raise StorageError(f"{env_prefix}{DURATION_ENV}: must be a number of seconds between 900 and 43200")
        extra["DurationSeconds"] = int(text)
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=core.create_client, source_credentials=source, role_arn=role_arn, extra_args=extra
    )
    return DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method="assume-role")
