"""The vendor page's scenario (tag of 100, then 2 new videos and a tag of 50, initial-tag 150) with input
and output on each object store, and once mixed (input on S3, output local), through the CLI and a real
Dagster instance. The S3 and Azure runs also scan logs, event log, metadata and outputs for secrets."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import open_storage
from datapool_pipeline.storage.secrets import secret_values
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml
from datapool_pipeline_tests.storage.backends import AZURITE_ACCOUNT, AZURITE_KEY, Backend, upload_folder

# Slow tier: real object-store servers and real runs.
pytestmark = pytest.mark.slow

CASES = [("s3", "s3"), ("gcs", "gcs"), ("azure", "azure"), ("s3", "local")]


def _use_azure_sas(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the account key by an account SAS token (the credential the vendor product uses)."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2),
    )
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)


def _run(cli, yaml_path: Path, *args: str):  # noqa: ANN001, ANN202
    result = cli("--datasets", str(yaml_path), *args)
    assert result.code == 0, result.err
    return result


def _assert_no_secrets(texts: list[str], dagster_home: Path, output_uri: str) -> None:
    secrets = secret_values()
    assert secrets, "the scenario must run with credentials in the environment"
    haystacks = list(texts)
    for path in dagster_home.rglob("*"):
        if path.is_file():
            haystacks.append(path.read_bytes().decode("utf-8", "replace"))
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            haystacks += [str(entry) for entry in instance.all_logs(run.run_id)]
            haystacks.append(str(run.tags))
    output = open_storage(output_uri)
    haystacks += [output.read_bytes(i.key).decode("utf-8", "replace") for i in output.list()
                  if not i.key.endswith(".png")]
    leaks = [s[:4] + "..." for s in secrets if any(s in h for h in haystacks)]
    assert not leaks, f"secret values found in logs/metadata/outputs: {leaks}"


@pytest.mark.parametrize(("source", "target"), CASES, ids=[f"{a}-to-{b}" for a, b in CASES])
def test_vendor_scenario_on_object_stores(
    source: str, target: str, request: pytest.FixtureRequest, cli, dagster_home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend: Backend = request.getfixturevalue(source)
    if source == "azure":
        _use_azure_sas(backend, monkeypatch)
    input_uri = backend.location("raw/videos")
    output_uri = backend.location("lightly") if target != "local" else str(tmp_path / "lightly")
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", input_uri, output_uri)
    local = tmp_path / "videos"
    add_videos(local, ["a.mov", "b.mov", "c.mov"], seconds=5.0, fps=10)
    upload_folder(local, input_uri)

    first = _run(cli, yaml_path, "run", "videos-datapool", "--n-samples", "100")
    add_videos(local / "new", ["d.mov", "e.mov"], first_source=3, seconds=5.0, fps=10)
    upload_folder(local / "new", input_uri)
    second = _run(cli, yaml_path, "run", "videos-datapool", "--use-datapool", "--n-samples", "50")

    listed = [line.split() for line in _run(cli, yaml_path, "tags", "videos-datapool").out.splitlines()]
    assert [int(n) for _, n in listed] == [50, 100, 150] and listed[-1][0] == "initial-tag"
    run2 = _run(cli, yaml_path, "export", "videos-datapool", "--tag", listed[0][0]).out.split()
    assert len(run2) == 50 and all(k.startswith(("frames/d.mov/", "frames/e.mov/")) for k in run2)
    pool = _run(cli, yaml_path, "export", "videos-datapool", "--tag", "initial-tag").out.split()
    assert len(pool) == len(set(pool)) == 150

    # Only the selected frames are written to the output datasource, as full-resolution images.
    output = open_storage(output_uri)
    assert {i.key for i in output.list("frames/")} == set(pool)
    frame = output.read_bytes(pool[0])
    assert frame.startswith(b"\x89PNG")
    assert [i.key for i in output.list("datapool/access-check/")] == []  # the verification marker is gone
    state = DatapoolStore(output).load_state()
    assert state.samples["sample_id"].n_unique() == 150
    assert state.samples.group_by("tag").len().sort("len")["len"].to_list() == [50, 100]

    if source == "s3" and target == "s3":
        # The datapool tables are plain Parquet in the bucket: polars reads them straight from S3.
        import os

        bucket_prefix = output_uri.removeprefix("s3://")
        pool_df = pl.read_parquet(
            f"s3://{bucket_prefix}/datapool/samples/*.parquet",
            storage_options={
                "aws_endpoint_url": os.environ["AWS_ENDPOINT_URL"], "aws_allow_http": "true",
                "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"], "aws_region": "us-east-1",
            },
        )
        assert pool_df.height == 150
    if source in ("s3", "azure") and target != "local":
        _assert_no_secrets([first.out, first.err, second.out, second.err], dagster_home, output_uri)
