"""s3://bucket/prefix datasources through boto3 (AWS S3 and S3-compatible stores: MinIO, Ceph, R2).

Credentials: boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE,
instance or task roles); AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for a custom endpoint. Delegated access:
DATAPOOL_S3_ROLE_ARN (+ DATAPOOL_S3_EXTERNAL_ID) is assumed with STS on top of those credentials, and the
temporary credentials are refreshed by botocore before they expire.
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


def _client_error_reason(exc: Any) -> str:
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "error"))
    if getattr(exc, "operation_name", "") == "AssumeRole":
        return (f"assuming the role in {ROLE_ARN_ENV} was refused ({code}): check the role ARN, its trust "
                f"policy and {EXTERNAL_ID_ENV}")
    if code == "NoSuchBucket":
        return "the bucket does not exist (NoSuchBucket)"
    if code in _BAD_CREDENTIALS:
        return f"the credentials were rejected ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return f"access denied ({code})"
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
        import boto3
        import botocore.session
        from botocore.config import Config

        core = botocore.session.Session()
        if not (os.environ.get("AWS_REGION") or core.get_config_variable("region")):
            core.set_config_variable("region", "us-east-1")
        role_arn = os.environ.get(ROLE_ARN_ENV, "").strip()
        if role_arn:
            core._credentials = _assume_role_credentials(core, role_arn)  # botocore's documented hook
        config = Config(
            # total_max_attempts counts the first request; botocore's "max_attempts" counts retries only.
            retries={"mode": "standard", "total_max_attempts": retry_settings().attempts},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=16,
            s3={"addressing_style": os.environ.get(ADDRESSING_ENV, "auto")},
        )
        return boto3.session.Session(botocore_session=core).client("s3", config=config)

    @contextlib.contextmanager
    def _call(self, action: str, key: str = "") -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except ClientError as exc:
            raise self.error(action, key, _client_error_reason(exc)) from None
        except NoCredentialsError:
            raise self.error(
                action, key, "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or a profile / instance role)"
            ) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            # The message holds the endpoint URL only; the class says what happened (reset, timeout, refused).
            raise self.error(
                action, key, f"gave up after {retry_settings().attempts} attempt(s): connection failed "
                f"({type(exc).__name__})"
            ) from None
        except BotoCoreError as exc:
            raise self.error(action, key, f"{type(exc).__name__}: {exc}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._call("listing", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._list_prefix(prefix), PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = self._key(obj["Key"])
                    if key is not None:
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


def _assume_role_credentials(core: Any, role_arn: str) -> Any:
    """STS AssumeRole credentials (with the external id) that botocore refreshes before expiry."""
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    source = core.get_credentials()
    if source is None:
        raise StorageError(
            f"{ROLE_ARN_ENV} is set but there are no source credentials to assume it with: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile / instance role)"
        )
    extra: dict[str, Any] = {"RoleSessionName": os.environ.get(SESSION_NAME_ENV, "datapool")}
    external_id = os.environ.get(EXTERNAL_ID_ENV, "").strip()
    if external_id:
        extra["ExternalId"] = external_id
    duration = os.environ.get(DURATION_ENV, "").strip()
    if duration:
        if not duration.isdigit() or not 900 <= int(duration) <= 43200:
            raise StorageError(f"{DURATION_ENV}: must be a number of seconds between 900 and 43200")
        extra["DurationSeconds"] = int(duration)
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=core.create_client, source_credentials=source, role_arn=role_arn, extra_args=extra
    )
    return DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method="assume-role")
