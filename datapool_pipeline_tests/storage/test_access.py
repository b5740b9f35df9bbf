"""Credentials and the run-start access check: delegated S3 access with an external id against a moto
server that enforces IAM, a read-only Azure SAS on the output, a missing bucket, and bypass_verify."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datapool_pipeline.storage import StorageError, open_storage
from datapool_pipeline.storage.verify import AccessCheckError, verify_access
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml
from datapool_pipeline_tests.storage.backends import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Backend,
    iam_moto_server,
    upload_folder,
)

# Slow tier: real object-store servers (moto, gcp-storage-emulator, Azurite).
pytestmark = pytest.mark.slow

EXTERNAL_ID = "vendor-external-id-7f3a9c"
# The calls made before moto starts checking credentials: they create the IAM world below.
_SETUP_CALLS = 6


@dataclass
class IamWorld:
    endpoint: str
    role_arn: str
    access_key: str
    secret_key: str
    bucket: str


@pytest.fixture
def iam_s3(tmp_path: Path) -> Iterator[IamWorld]:
    """A moto server that enforces IAM: a user with keys who may only reach the bucket through a role
    whose trust policy names that user and requires the external id."""
    import boto3

    with iam_moto_server(_SETUP_CALLS) as (endpoint, setup):
        iam = boto3.client("iam", **setup)
        user = iam.create_user(UserName="vendor")["User"]  # 1
        key = iam.create_access_key(UserName="vendor")["AccessKey"]  # 2
        allow_assume = {"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}
        iam.put_user_policy(UserName="vendor", PolicyName="assume", PolicyDocument=json.dumps(allow_assume))  # 3
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}},
        }]}
        role = iam.create_role(RoleName="datapool-reader", AssumeRolePolicyDocument=json.dumps(trust))["Role"]  # 4
        allow_s3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_role_policy(RoleName="datapool-reader", PolicyName="s3", PolicyDocument=json.dumps(allow_s3))  # 5
        boto3.client("s3", **setup).create_bucket(Bucket="vendor-raw")  # 6
        yield IamWorld(endpoint, role["Arn"], key["AccessKeyId"], key["SecretAccessKey"], "vendor-raw")


def _delegated_env(monkeypatch: pytest.MonkeyPatch, world: IamWorld, external_id: str) -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", world.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", world.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", world.secret_key)
    monkeypatch.setenv("DATAPOOL_S3_ROLE_ARN", world.role_arn)
    monkeypatch.setenv("DATAPOOL_S3_EXTERNAL_ID", external_id)


def test_delegated_s3_access_with_external_id(
    iam_s3: IamWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli
) -> None:
    uri = f"s3://{iam_s3.bucket}/raw"
    # The user's own keys reach nothing: only the role grants access to the bucket.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", iam_s3.endpoint)
    monkeypatch.delenv("DATAPOOL_S3_ROLE_ARN", raising=False)
    with pytest.raises(StorageError, match="access denied"):
        list(open_storage(uri).list())

    _delegated_env(monkeypatch, iam_s3, EXTERNAL_ID)
    storage = open_storage(uri)
    storage.write_bytes("a/clip.bin", b"0123456789")
    assert [(i.key, i.size) for i in storage.list()] == [("a/clip.bin", 10)]
    verify_access("vendor", storage, open_storage(str(tmp_path / "out")))

    # Temporary credentials are renewed before they expire: with the shortest session STS allows (15 min,
    # inside botocore's 15-minute advisory refresh window) every request assumes the role afresh.
    monkeypatch.setenv("DATAPOOL_S3_ROLE_DURATION_SECONDS", "900")
    short = open_storage(uri)
    list(short.list())
    credentials = short.client._request_signer._credentials
    assert credentials.method == "assume-role"
    first_key = credentials.get_frozen_credentials().access_key
    list(short.list())
    assert credentials.get_frozen_credentials().access_key != first_key
    monkeypatch.delenv("DATAPOOL_S3_ROLE_DURATION_SECONDS")

    # The wrong external id: the run fails at once, naming the datasource and what to check.
    _delegated_env(monkeypatch, iam_s3, "not-the-external-id")
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "vendor", "VIDEOS", uri, str(tmp_path / "out"))
    result = cli("--datasets", str(yaml_path), "run", "vendor", "--n-samples", "5")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert f"input datasource {uri}" in line and "DATAPOOL_S3_EXTERNAL_ID" in line and "AssumeRole" not in line
    assert iam_s3.secret_key not in result.err + result.out and "not-the-external-id" not in result.err
    assert not (tmp_path / "out").exists()


def test_wrong_s3_secret_is_rejected_clearly(iam_s3: IamWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    _delegated_env(monkeypatch, iam_s3, EXTERNAL_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123456")
    storage = open_storage(f"s3://{iam_s3.bucket}/raw")
    with pytest.raises(AccessCheckError) as info:
        verify_access("vendor", storage, storage)
    assert "input datasource s3://vendor-raw/raw" in str(info.value)
    assert "wrong-secret-value-123456" not in str(info.value)


def _azure_sas(**permissions: bool) -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(**permissions), expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )


@pytest.mark.parametrize("bypass", [False, True], ids=["verified", "bypass_verify"])
def test_read_only_sas_on_the_output_fails_clearly(
    azure: Backend, bypass: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli
) -> None:
    input_uri, output_uri = azure.location("raw"), azure.location("lightly")
    add_videos(tmp_path / "v", ["a.mov"], seconds=1.0)
    upload_folder(tmp_path / "v", input_uri)
    sas = _azure_sas(read=True, list=True)
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    extra = "    bypass_verify: true\n" if bypass else ""
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "vendor", "VIDEOS", input_uri, output_uri, extra=extra)

    result = cli("--datasets", str(yaml_path), "run", "vendor", "--n-samples", "5")
    line = result.err.strip().splitlines()[-1]
    if bypass:
        # No check at run start: the first write fails, still naming the location and the cause.
        assert result.code == 1 and output_uri in line and "AuthorizationPermissionMismatch" in line
        assert "datasource" not in line
    else:
        assert result.code == 2
        assert f"cannot write to the output datasource {output_uri}" in line
        assert "AuthorizationPermissionMismatch" in line and "bypass_verify" in line
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    assert sas not in result.err + result.out and signature not in result.err + result.out
    assert list(open_storage(output_uri).list()) == []


def test_missing_bucket_fails_verification_clearly(s3: Backend, tmp_path: Path, cli) -> None:
    output_uri = s3.location("lightly")
    missing = "s3://datapool-no-such-bucket/raw"
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "vendor", "VIDEOS", missing, output_uri)
    result = cli("--datasets", str(yaml_path), "run", "vendor", "--n-samples", "5")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert f"dataset 'vendor': cannot read the input datasource {missing}" in line
    assert "does not exist" in line and os.environ["AWS_SECRET_ACCESS_KEY"] not in result.err

    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "vendor", "VIDEOS", s3.location("raw"),
                                    "s3://datapool-no-such-output/lightly")
    result = cli("--datasets", str(yaml_path), "run", "vendor", "--n-samples", "5")
    assert result.code == 2 and "output datasource s3://datapool-no-such-output/lightly" in result.err
