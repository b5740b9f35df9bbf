"""Different credentials for a dataset's input and output (datasets.yaml `credentials: {input: RAW, output:
OUT}`), against a moto server that enforces IAM: a read-only key for the input bucket, a read-write key for
the output bucket, and the standard AWS_* variables holding a third, unrelated key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from datapool_pipeline.assets.resources import (
    DatapoolS3Resource,
    storage_at,
    storage_for,
    storage_resource_key,
    storage_resources,
)
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import parse_datasets
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage import StorageError
from datapool_pipeline.storage.secrets import redact, secret_values
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml
from datapool_pipeline_tests.storage.backends import iam_moto_server

# Slow tier: IAM-enforcing moto servers, Azurite, real runs.
pytestmark = pytest.mark.slow

RAW_BUCKET, OUT_BUCKET = "vendor-raw", "vendor-lightly"
_SETUP_CALLS = 11  # requests moto serves before it checks credentials: the IAM world below
CREDENTIALS = "    credentials: {input: RAW, output: OUT}\n"


@dataclass
class Key:
    access_key: str
    secret_key: str


@dataclass
class SplitWorld:
    endpoint: str
    reader: Key  # s3:ListBucket + s3:GetObject on the input bucket only
    writer: Key  # s3:* on the output bucket only
    admin: Key  # s3:* everywhere (the test's own uploads and checks)


def _policy(*statements: tuple[list[str], list[str]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": resources} for actions, resources in statements
    ]})


@pytest.fixture
def split_s3() -> Iterator[SplitWorld]:
    import boto3

    with iam_moto_server(_SETUP_CALLS) as (endpoint, setup):
        iam = boto3.client("iam", **setup)
        policies = {
            "reader": _policy((["s3:ListBucket"], [f"arn:aws:s3:::{RAW_BUCKET}"]),
                              (["s3:GetObject"], [f"arn:aws:s3:::{RAW_BUCKET}/*"])),
            "writer": _policy((["s3:*"], [f"arn:aws:s3:::{OUT_BUCKET}", f"arn:aws:s3:::{OUT_BUCKET}/*"])),
            "admin": _policy((["s3:*"], ["*"])),
        }
        keys = {}
        for user, policy in policies.items():  # 3 requests each
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=policy)
            keys[user] = Key(key["AccessKeyId"], key["SecretAccessKey"])
        s3 = boto3.client("s3", **setup)
        s3.create_bucket(Bucket=RAW_BUCKET)  # 10
        s3.create_bucket(Bucket=OUT_BUCKET)  # 11
        yield SplitWorld(endpoint, keys["reader"], keys["writer"], keys["admin"])


@pytest.fixture
def split_env(split_s3: SplitWorld, monkeypatch: pytest.MonkeyPatch) -> SplitWorld:
    """RAW_* = the read-only key, OUT_* = the output key, AWS_* (standard) = the admin key."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "DATAPOOL_S3_ROLE_ARN",
                "DATAPOOL_S3_EXTERNAL_ID", "AWS_REGION", "DATAPOOL_REMOTE_MEDIA"):
        monkeypatch.delenv(var, raising=False)
    for prefix, key in (("RAW_", split_s3.reader), ("OUT_", split_s3.writer), ("", split_s3.admin)):
        monkeypatch.setenv(f"{prefix}AWS_ACCESS_KEY_ID", key.access_key)
        monkeypatch.setenv(f"{prefix}AWS_SECRET_ACCESS_KEY", key.secret_key)
        monkeypatch.setenv(f"{prefix}AWS_ENDPOINT_URL", split_s3.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return split_s3


def _spec(tmp_path: Path, credentials: str = CREDENTIALS):  # noqa: ANN202
    path = write_datasets_yaml(tmp_path / "datasets.yaml", "vendor", "VIDEOS", f"s3://{RAW_BUCKET}/raw",
                               f"s3://{OUT_BUCKET}/lightly", extra=credentials)
    import yaml

    return parse_datasets(yaml.safe_load(path.read_text()), tmp_path)["vendor"], path


def test_input_and_output_use_their_own_keys(
    split_env: SplitWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = _spec(tmp_path)
    resources = storage_resources({"vendor": spec})
    assert set(resources) == {storage_resource_key(spec, "input"), storage_resource_key(spec, "output")}
    assert set(resources) == {"vendor_input_storage", "vendor_output_storage"}
    reader = resources["vendor_input_storage"]
    assert isinstance(reader, DatapoolS3Resource)
    assert isinstance(reader.aws_secret_access_key, dg.EnvVar)
    assert reader.aws_secret_access_key == "RAW_AWS_SECRET_ACCESS_KEY"  # the variable's name, not its value
    assert resources["vendor_output_storage"].aws_access_key_id == "OUT_AWS_ACCESS_KEY_ID"

    # The admin's standard credentials put a file in the input bucket.
    storage_at(spec.input).write_bytes("a/clip.bin", b"0123456789")

    raw = storage_for(spec, "input", resources["vendor_input_storage"])
    assert [(i.key, i.size) for i in raw.list()] == [("a/clip.bin", 10)]
    assert raw.read_bytes("a/clip.bin") == b"0123456789"
    with pytest.raises(StorageError, match=r"access denied \(AccessDenied\) for the key in RAW_AWS_ACCESS_KEY_ID"):
        raw.write_bytes("a/other.bin", b"no")  # the input key is read-only
    out = storage_for(spec, "output")  # outside a run: the same resource, built from the environment
    out.write_bytes("datapool/x.json", b"{}")
    assert out.put_if_absent("commits/0001.json", b"one") and not out.put_if_absent("commits/0001.json", b"two")
    with pytest.raises(StorageError, match="access denied"):
        list(storage_at(spec.input, env_prefix="OUT_").list())  # the output key cannot read the input

    # A wrong secret: refused, naming the prefixed variables and never the value.
    monkeypatch.setenv("RAW_AWS_SECRET_ACCESS_KEY", "wrong-raw-secret-" + "x" * 20)
    with pytest.raises(StorageError) as info:
        list(storage_for(spec, "input").list())
    message = str(info.value)
    assert "the credentials were rejected" in message and "RAW_AWS_ACCESS_KEY_ID" in message
    assert "wrong-raw-secret" not in message and split_env.reader.secret_key not in message


def test_datapool_run_reads_with_the_input_key_and_commits_with_the_output_key(
    split_env: SplitWorld, tmp_path: Path, cli, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every step of the run in its own process: they share nothing through a local disk (issue 11).
    monkeypatch.setenv("DATAPOOL_RUN_EXECUTOR", "multiprocess")
    spec, yaml_path = _spec(tmp_path)
    add_videos(tmp_path / "v", ["a.mov", "b.mov"], seconds=1.0, fps=10)
    admin_raw = storage_at(spec.input)
    for path in sorted((tmp_path / "v").iterdir()):
        admin_raw.write_bytes(path.name, path.read_bytes())

    result = cli("--datasets", str(yaml_path), "run", "vendor", "--n-samples", "5")
    assert result.code == 0, result.err
    tags = cli("--datasets", str(yaml_path), "tags", "vendor")
    assert tags.code == 0, tags.err
    listed = [line.split() for line in tags.out.splitlines()]
    assert [int(n) for _, n in listed] == [5, 5] and listed[-1][0] == "initial-tag"
    exported = cli("--datasets", str(yaml_path), "export", "vendor", "--tag", listed[0][0]).out.split()
    assert len(exported) == 5
    # The tag is committed in the output bucket (checked with the admin key).
    admin_out = storage_at(spec.output)
    keys = {i.key for i in admin_out.list()}
    assert set(exported) <= keys and any(k.startswith("datapool/") for k in keys)
    assert not any(i.key.startswith(("datapool/", "frames/")) for i in admin_raw.list())
    commit = DatapoolStore(admin_out).load_commits()[-1]
    with dg.DagsterInstance.get() as instance:
        starts = instance.all_logs(commit.run_id, of_type=dg.DagsterEventType.STEP_START)
        assert len(starts) >= 6 and len({e.dagster_event.pid for e in starts}) == len(starts)
    # The steps handed their outputs over through the output bucket, not the instance's local storage.
    assert {"raw_files.json", "selection.json", "tag.json"} <= {
        i.key.rsplit("/", 1)[-1] for i in admin_out.list(f"datapool/runs/{commit.run_id}/")}
    local = [p for p in (dagster_home / "storage").rglob("*") if p.is_file() and "compute_logs" not in p.parts]
    assert local == []

    # Every credential value, the prefixed ones included, is known to the scrubber and absent from output.
    secrets = secret_values()
    assert split_env.reader.secret_key in secrets and split_env.writer.secret_key in secrets
    texts = [result.out, result.err, tags.out, tags.err]
    for path in dagster_home.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    assert not [s[:4] for s in secrets if any(s in t for t in texts)]

    # A wrong output key: refused at run start with one line naming the prefixed variable.
    wrong = "wrong-out-secret-" + "y" * 20
    monkeypatch.setenv("OUT_AWS_SECRET_ACCESS_KEY", wrong)
    failed = cli("--datasets", str(yaml_path), "run", "vendor", "--use-datapool", "--n-samples", "5")
    assert failed.code != 0
    line = failed.err.strip().splitlines()[-1]
    assert f"output datasource {spec.output}" in line and "OUT_AWS_ACCESS_KEY_ID" in line, failed.err
    assert wrong not in failed.err + failed.out and split_env.writer.secret_key not in failed.err + failed.out
    # ... and a wrong input key names the input's variable.
    monkeypatch.setenv("OUT_AWS_SECRET_ACCESS_KEY", split_env.writer.secret_key)
    monkeypatch.setenv("RAW_AWS_ACCESS_KEY_ID", "AKIAWRONGRAWKEY00000")
    failed = cli("--datasets", str(yaml_path), "run", "vendor", "--use-datapool", "--n-samples", "5")
    line = failed.err.strip().splitlines()[-1]
    assert failed.code != 0 and f"input datasource {spec.input}" in line and "RAW_AWS_ACCESS_KEY_ID" in line


def test_credentials_validation_names_the_field(tmp_path: Path) -> None:
    def parse(input_uri: str, credentials: str) -> None:
        raw = {"datasets": {"vendor": {"type": "VIDEOS", "input": input_uri, "output": "s3://out/lightly",
                                       "credentials": credentials}}}
        parse_datasets(raw, tmp_path)

    for bad in ({"input": "raw-key"}, {"input": "RAW_"}, {"output": "AKIA/secret+value"}, {"output": 12}):
        with pytest.raises(ConfigError) as info:
            parse("s3://raw/videos", bad)  # type: ignore[arg-type]
        side = next(iter(bad))
        assert f"datasets.vendor.credentials.{side}: must be an environment-variable prefix" in str(info.value)
        assert "secret+value" not in str(info.value)
    with pytest.raises(ConfigError, match=r"datasets\.vendor\.credentials\.input: the input is a local folder"):
        parse(str(tmp_path / "raw"), {"input": "RAW"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"datasets\.vendor\.credentials\.[a-z_]+: unknown field"):
        parse("s3://raw/videos", {"inputs": "RAW"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"datasets\.vendor\.credentials: expected a mapping"):
        parse("s3://raw/videos", "RAW")


def test_prefixed_credentials_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_AWS_SECRET_ACCESS_KEY", "rawSecretValue/0123456789")
    monkeypatch.setenv("OUT_AZURE_STORAGE_SAS_TOKEN", "?sv=2024-01-01&sp=rl&sig=b3V0LXNpZ25hdHVyZQ")
    monkeypatch.setenv("RAW_AWS_ENDPOINT_URL", "http://127.0.0.1:9000")  # not a secret
    cleaned = redact("a rawSecretValue/0123456789 b sig=b3V0LXNpZ25hdHVyZQ c http://127.0.0.1:9000")
    assert "rawSecretValue" not in cleaned and "b3V0LXNpZ25hdHVyZQ" not in cleaned
    assert "http://127.0.0.1:9000" in cleaned


def test_definitions_show_each_side_as_a_resource_with_variable_names_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the UI's Resources view gets (the code location's repository snapshot): one resource per
    object-store side, secret fields as the names of their variables, no value anywhere."""
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._serdes import serialize_value

    from datapool_pipeline.definitions import build_definitions

    secret, conn = "raw-secret-value-0123456789", "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=c2VjcmV0;"
    monkeypatch.setenv("RAW_AWS_ACCESS_KEY_ID", "AKIDRAWKEY")
    monkeypatch.setenv("RAW_AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    path = write_datasets_yaml(tmp_path / "datasets.yaml", "vendor", "VIDEOS", "s3://raw/videos", "az://lightly/v",
                               extra="    credentials: {input: RAW}\n")
    snap = RepositorySnap.from_def(build_definitions(str(path)).get_repository_def())
    resources = {r.name: r for r in snap.resources}
    raw, out = resources["vendor_input_storage"], resources["vendor_output_storage"]
    assert raw.resource_type.endswith("DatapoolS3Resource")
    assert out.resource_type.endswith("DatapoolAzureBlobStorageResource")
    assert raw.configured_values["aws_secret_access_key"].name == "RAW_AWS_SECRET_ACCESS_KEY"
    assert out.configured_values["connection_string"].name == "AZURE_STORAGE_CONNECTION_STRING"
    text = serialize_value(snap)
    assert secret not in text and "AKIDRAWKEY" not in text and "c2VjcmV0" not in text


def test_azure_sides_with_their_own_prefixes(azure, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Azurite: the input through RAW_* (a read/list-only SAS), the output through OUT_* (the account key);
    the standard AZURE_* variables are unset, so nothing but the prefixed ones can be used."""
    import datetime as dt

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from datapool_pipeline_tests.storage.backends import AZURITE_ACCOUNT, AZURITE_KEY

    input_uri, output_uri = azure.location("raw"), azure.location("lightly")
    storage_at(input_uri).write_bytes("a.bin", b"abc")  # with the standard variables, before they go
    sas = generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True), expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    for var in ("AZURE_STORAGE_ACCOUNT_URL", "AZURE_STORAGE_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("RAW_AZURE_STORAGE_ACCOUNT_URL", azure.endpoint)
    monkeypatch.setenv("RAW_AZURE_STORAGE_SAS_TOKEN", sas)
    monkeypatch.setenv("OUT_AZURE_STORAGE_ACCOUNT_URL", azure.endpoint)
    monkeypatch.setenv("OUT_AZURE_STORAGE_KEY", AZURITE_KEY)
    raw = {"datasets": {"vendor": {"type": "VIDEOS", "input": input_uri, "output": output_uri,
                                   "credentials": {"input": "RAW", "output": "OUT"}}}}
    spec = parse_datasets(raw, Path("."))["vendor"]

    reader = storage_for(spec, "input")
    assert [i.key for i in reader.list()] == ["a.bin"] and reader.read_bytes("a.bin") == b"abc"
    with pytest.raises(StorageError, match="access denied"):
        reader.write_bytes("b.bin", b"no")
    writer = storage_for(spec, "output")
    writer.write_bytes("datapool/x.json", b"{}")
    assert writer.read_bytes("datapool/x.json") == b"{}"

    wrong_key = "d3Jvbmcta2V5LXZhbHVlLTAxMjM0NTY3ODk="
    monkeypatch.setenv("OUT_AZURE_STORAGE_KEY", wrong_key)
    with pytest.raises(StorageError) as info:
        storage_for(spec, "output").write_bytes("datapool/y.json", b"{}")
    message = str(info.value)
    assert "OUT_AZURE_STORAGE_KEY" in message and wrong_key not in message and AZURITE_KEY not in message
