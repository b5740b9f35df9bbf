"""Object-store credentials as Dagster resources: dagster-aws `S3Resource`, dagster-gcp `GCSResource`,
dagster-azure `AzureBlobStorageResource`, one per dataset and side (input / output) on an object store.

Every secret field is a `dg.EnvVar` of the variable it comes from, so the UI's Resources view shows which
variable feeds which field, never a value. The variables are the standard ones (AWS_ACCESS_KEY_ID, ...),
or, when datasets.yaml gives the dataset `credentials: {input: RAW, output: OUT}`, the same names behind
that prefix (RAW_AWS_ACCESS_KEY_ID, OUT_AZURE_STORAGE_SAS_TOKEN, ...): a dataset can read with one
account or a read-only key and write with another. See docs/object-stores.md.

The resources subclass the integrations' ones only to add what the storage layer needs (role assumption,
a service-account JSON value, a connection string) and to build the SDK client with our retry, timeout and
pool settings (storage/retry.py); `storage_for` wraps that client in the Dagster-free storage backend.
The same resource objects serve the CLI and sensors, outside a run (`storage_for(spec, side)`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from datapool_pipeline.datasets import DatasetSpec, InputSpec
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage import Storage, gcs, is_object_store, open_storage, s3
from datapool_pipeline.storage import azure as az
from datapool_pipeline.storage.combined import CombinedInputs
from datapool_pipeline.storage.retry import RETRY_ENV, retry_settings

SIDES = ("input", "output")


def _env_prefix_field() -> Any:
    return Field(default="", description="Prefix of the environment variables these values come from.")


# -- the resources --------------------------------------------------------------------------------
# Each integration takes 1-2 s to import, so each class is made on first use (module __getattr__), and
# dagster itself is imported only by them: `datapool tags` on a local dataset imports no Dagster at all,
# on an S3 dataset only dagster-aws.
class StorageResourceMixin:
    """What every storage resource here adds to its integration's resource."""

    env_prefix: str

    def storage_client(self) -> Any:
        """A long-lived SDK client for our storage backend (shared, thread-safe)."""
        raise NotImplementedError

    def get_object_to_set_on_execution_context(self) -> Any:
        return self  # context.resources.<key> is the resource: storage_for reuses one client per config


def _top_level(cls: type) -> type:
    cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return cls


@functools.cache
def _s3_class() -> type:
    from dagster_aws.s3 import S3Resource

    class DatapoolS3Resource(StorageResourceMixin, S3Resource):
        """dagster-aws's S3Resource; its client has our retry/timeout/pool settings, and assumes a role
        (with an external id) on top of the keys when role_arn is set."""

        role_arn: str | None = Field(default=None, description="IAM role assumed with STS (delegated access).")
        external_id: str | None = Field(default=None, description="External id the role's trust policy requires.")
        role_session_name: str | None = Field(default=None, description="STS session name (default: datapool).")
        role_duration_seconds: str | None = Field(default=None, description="STS session length, 900..43200 s.")
        addressing_style: str | None = Field(default=None, description="S3 addressing style: auto, path, virtual.")
        env_prefix: str = _env_prefix_field()

        def get_client(self) -> Any:
            return s3.make_s3_client(
                access_key_id=self.aws_access_key_id, secret_access_key=self.aws_secret_access_key,
                session_token=self.aws_session_token, profile=self.profile_name, region=self.region_name,
                endpoint_url=self.endpoint_url, role_arn=self.role_arn, external_id=self.external_id,
                session_name=self.role_session_name, duration_seconds=self.role_duration_seconds,
                addressing_style=self.addressing_style, attempts=self.max_attempts, env_prefix=self.env_prefix,
                use_ssl=self.use_ssl, verify=self.verify,
            )

        def storage_client(self) -> Any:
            return self.get_client()

    return _top_level(DatapoolS3Resource)


@functools.cache
def _gcs_class() -> type:
    from dagster_gcp.gcs import GCSResource

    class DatapoolGCSResource(StorageResourceMixin, GCSResource):
        """dagster-gcp's GCSResource (project) plus the service-account JSON value or a credentials file;
        without either, application-default credentials (as GCSResource)."""

        service_account_json: str | None = Field(default=None, description="Service-account JSON key (the text).")
        credentials_file: str | None = Field(default=None, description="Path of a Google credentials file.")
        env_prefix: str = _env_prefix_field()

        def get_client(self) -> Any:
            return gcs.make_gcs_client(
                project=self.project, service_account_json=self.service_account_json,
                credentials_file=self.credentials_file, env_prefix=self.env_prefix,
            )

        def storage_client(self) -> Any:
            return self.get_client()

    return _top_level(DatapoolGCSResource)


@functools.cache
def _azure_class() -> type:
    from dagster_azure.blob import AzureBlobStorageResource

    class DatapoolAzureBlobStorageResource(StorageResourceMixin, AzureBlobStorageResource):
        """dagster-azure's AzureBlobStorageResource (account URL + SAS / key / DefaultAzureCredential) plus a
        connection string; `storage_client()` is a long-lived client with our retry policy (`get_client()`
        is the integration's context manager around one)."""

        connection_string: str | None = Field(default=None, description="Storage account connection string.")
        account: str | None = Field(default=None, description="Storage account name (for an account key).")
        env_prefix: str = _env_prefix_field()

        def storage_client(self) -> Any:
            cred = self.credential
            kind = cred.credential_type
            return az.make_service_client(
                connection_string=self.connection_string, account_url=self.account_url, account=self.account,
                sas_token=cred.token if kind == "sas" else None,  # type: ignore[union-attr]
                account_key=cred.key if kind == "key" else None,  # type: ignore[union-attr]
                credential=self._raw_credential() if kind == "default_azure_credential" else None,
                env_prefix=self.env_prefix,
            )

        @contextlib.contextmanager
        def get_client(self) -> Iterator[Any]:  # type: ignore[override]
            service = self.storage_client()
            try:
                yield service
            finally:
                service.close()

    return _top_level(DatapoolAzureBlobStorageResource)


_CLASSES = {"DatapoolS3Resource": _s3_class, "DatapoolGCSResource": _gcs_class,
            "DatapoolAzureBlobStorageResource": _azure_class}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _CLASSES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


StorageResource = Any  # one of the three classes above


# -- which resource, from which variables ---------------------------------------------------------
def storage_resource_key(spec: DatasetSpec, side: str) -> str:
    """The resource key of a dataset's input or output storage, e.g. videos_datapool_input_storage."""
    if side not in SIDES:
        raise ValueError(f"side must be 'input' or 'output', got {side!r}")
    return f"{spec.asset_prefix}_{side}_storage"


def input_resource_key(spec: DatasetSpec, index: int) -> str:
    """The resource key of one input of a dataset: the side's key for a single input, else numbered
    (videos_datapool_input_storage, or videos_datapool_input1_storage for the second of several)."""
    return storage_resource_key(spec, "input") if len(spec.inputs) == 1 else f"{spec.asset_prefix}_input{index}_storage"


def storage_resource(uri: str, env_prefix: str = "") -> StorageResource | None:
    """The resource for an object-store location whose credentials are in the variables behind
    `env_prefix` ('' = the standard ones), or None for a local folder.

    A field is bound to a variable (as an EnvVar) when that variable is set now; unset ones stay empty
    so that the SDK's own defaults apply (boto3's chain, application-default credentials)."""

    from dagster import EnvVar

    def var(*names: str) -> Any:
        for name in names:
            if os.environ.get(env_prefix + name, "").strip():
                return EnvVar(env_prefix + name)
        return None

    def value(name: str) -> str | None:
        return os.environ.get(env_prefix + name, "").strip() or None

    if uri.startswith("s3://"):
        return _s3_class()(
            aws_access_key_id=var("AWS_ACCESS_KEY_ID"), aws_secret_access_key=var("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=var("AWS_SESSION_TOKEN"), profile_name=var("AWS_PROFILE"),
            region_name=var("AWS_REGION", "AWS_DEFAULT_REGION"),
            endpoint_url=var("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            role_arn=var(s3.ROLE_ARN_ENV), external_id=var(s3.EXTERNAL_ID_ENV),
            role_session_name=var(s3.SESSION_NAME_ENV), role_duration_seconds=var(s3.DURATION_ENV),
            addressing_style=var(s3.ADDRESSING_ENV), max_attempts=retry_settings().attempts,
            env_prefix=env_prefix,
        )
    if uri.startswith("gs://"):
        return _gcs_class()(
            project=var(gcs.PROJECT_ENV), service_account_json=var(gcs.SERVICE_ACCOUNT_JSON_ENV),
            credentials_file=var(gcs.CREDENTIALS_FILE_ENV) if env_prefix else None,  # standard: ADC reads it
            env_prefix=env_prefix,
        )
    if uri.startswith("az://"):
        from dagster_azure.blob import (
            AzureBlobStorageAnonymousCredential,
            AzureBlobStorageDefaultCredential,
            AzureBlobStorageKeyCredential,
            AzureBlobStorageSASTokenCredential,
        )

        credential: Any
        if value(az.CONNECTION_STRING_ENV):
            credential = AzureBlobStorageAnonymousCredential()  # the connection string holds the credential
        elif value(az.SAS_ENV):
            credential = AzureBlobStorageSASTokenCredential(token=var(az.SAS_ENV))
        elif value(az.KEY_ENV):
            credential = AzureBlobStorageKeyCredential(key=var(az.KEY_ENV))
        else:
            credential = AzureBlobStorageDefaultCredential()
        account = value(az.ACCOUNT_ENV)
        account_url = var(az.ACCOUNT_URL_ENV) or (f"https://{account}.blob.core.windows.net" if account else "")
        return _azure_class()(
            account_url=account_url, credential=credential, connection_string=var(az.CONNECTION_STRING_ENV),
            account=var(az.ACCOUNT_ENV), env_prefix=env_prefix,
        )
    return None


def output_storage_resource(spec: DatasetSpec) -> StorageResource | None:
    return storage_resource(spec.output, spec.credentials.env_prefix("output"))


def input_storage_resource(spec: DatasetSpec, entry: InputSpec) -> StorageResource | None:
    return storage_resource(entry.uri, spec.input_env_prefix(entry))


def storage_resources(specs: dict[str, DatasetSpec] | list[DatasetSpec]) -> dict[str, StorageResource]:
    """The storage resources of every dataset input and output on an object store, by resource key."""
    resources: dict[str, StorageResource] = {}
    for spec in specs.values() if isinstance(specs, dict) else specs:
        for index, entry in enumerate(spec.inputs):
            resource = input_storage_resource(spec, entry)
            if resource is not None:
                resources[input_resource_key(spec, index)] = resource
        resource = output_storage_resource(spec)
        if resource is not None:
            resources[storage_resource_key(spec, "output")] = resource
    return resources


# -- from a resource to our storage ---------------------------------------------------------------
_CLIENTS: dict[tuple[str, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _resolved(resource: StorageResource) -> StorageResource:
    """The resource with its EnvVars read (a no-op for one Dagster initialized for a run)."""
    from dagster import DagsterInvalidConfigError

    try:
        return resource.process_config_and_initialize()
    except DagsterInvalidConfigError as exc:
        # An EnvVar bound when the definitions loaded, unset now: name the variables (never values).
        names = sorted(set(re.findall(r'environment variable "([A-Za-z0-9_]+)"', str(exc))))
        if not names:
            raise
        raise ConfigError(
            f"{', '.join(names)} not set: the storage resource {type(resource).__name__} reads it"
        ) from None


def client_for(resource: StorageResource) -> Any:
    """The SDK client of a resource: one shared (thread-safe) client per distinct resolved config."""
    resolved = _resolved(resource)
    config = json.dumps(resolved._convert_to_config_dictionary(), sort_keys=True, default=str)
    key = (type(resolved).__name__, config, *(os.environ.get(v, "") for v in RETRY_ENV))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = resolved.storage_client()
    return client


def storage_at(uri: str, resource: Any = None, env_prefix: str = "") -> Storage:
    """Our storage backend for a location, its client made from `resource` (a storage resource, or the
    SDK client itself), else from the resource for the variables behind `env_prefix`."""
    if not is_object_store(uri):
        return open_storage(uri)
    if resource is None:
        resource = storage_resource(uri, env_prefix)
    if isinstance(resource, StorageResourceMixin):
        # The client (and the EnvVars) on first use: definitions load without network or credentials.
        chosen = resource
        return open_storage(uri, client_factory=lambda: client_for(chosen), env_prefix=resource.env_prefix)
    return open_storage(uri, client=resource, env_prefix=env_prefix)


def storage_for(spec: DatasetSpec, side: str, resource: Any = None) -> Storage:
    """A dataset's input or output storage. In an asset, pass `context.resources.<storage_resource_key>`;
    elsewhere (CLI, sensors) leave `resource` out: the same resource is built from the environment."""
    if side not in SIDES:
        raise ValueError(f"side must be 'input' or 'output', got {side!r}")
    if side == "output":
        if resource is None and is_object_store(spec.output):
            resource = output_storage_resource(spec)
        return storage_at(spec.output, resource, spec.credentials.env_prefix("output"))
    members: list[tuple[str | None, Storage]] = []
    for entry in spec.inputs:
        chosen = resource if len(spec.inputs) == 1 else None
        if chosen is None and is_object_store(entry.uri):
            chosen = input_storage_resource(spec, entry)
        members.append((entry.name, storage_at(entry.uri, chosen, spec.input_env_prefix(entry))))
    if len(members) == 1 and members[0][0] is None:
        return members[0][1]
    return CombinedInputs(members)
