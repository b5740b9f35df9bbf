"""Report links in the UI: an object-store report is named by its s3:// / gs:// / az:// URI (text, plus an https
URL where a browser can open it), a local report by its path; no `path` entry of a pickled output beside them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from datapool_pipeline.assets.metadata import file_entries
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml
from datapool_pipeline_tests.storage.backends import Backend


def _plain(entries: dict[str, dg.MetadataValue]) -> dict[str, tuple[str, str]]:
    return {k: (type(v).__name__, v.value) for k, v in entries.items()}


@pytest.mark.parametrize(
    ("uri", "env", "expected"),
    [
        ("/data/out/datapool/reports/t/report.pdf", {},
         {"report": ("PathMetadataValue", "/data/out/datapool/reports/t/report.pdf")}),
        ("s3://bkt/out/datapool/reports/t 1/report.pdf", {"AWS_REGION": "eu-west-1"},
         {"report": ("TextMetadataValue", "s3://bkt/out/datapool/reports/t 1/report.pdf"),
          "report_url": ("UrlMetadataValue", "https://s3.console.aws.amazon.com/s3/object/bkt?region=eu-west-1&"
                         "prefix=out%2Fdatapool%2Freports%2Ft%201%2Freport.pdf")}),
        # A custom endpoint (MinIO, moto): the console does not know the bucket, so no URL.
        ("s3://bkt/r.pdf", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
         {"report": ("TextMetadataValue", "s3://bkt/r.pdf")}),
        ("s3://bkt/r.pdf", {"OUT_AWS_ENDPOINT_URL_S3": "http://minio:9000"},
         {"report": ("TextMetadataValue", "s3://bkt/r.pdf")}),
        ("gs://bkt/out/r.pdf", {},
         {"report": ("TextMetadataValue", "gs://bkt/out/r.pdf"),
          "report_url": ("UrlMetadataValue", "https://console.cloud.google.com/storage/browser/_details/bkt/out/r.pdf")}),
        ("gs://bkt/r.pdf", {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"},
         {"report": ("TextMetadataValue", "gs://bkt/r.pdf")}),
        ("az://ctr/out/r.pdf", {"OUT_AZURE_STORAGE_ACCOUNT": "acct"},
         {"report": ("TextMetadataValue", "az://ctr/out/r.pdf"),
          "report_url": ("UrlMetadataValue", "https://acct.blob.core.windows.net/ctr/out/r.pdf")}),
        ("az://ctr/r.pdf", {"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=cs;"
                            "AccountKey=k;EndpointSuffix=core.windows.net"},
         {"report": ("TextMetadataValue", "az://ctr/r.pdf"),
          "report_url": ("UrlMetadataValue", "https://cs.blob.core.windows.net/ctr/r.pdf")}),
        # Azurite (http) or no account known: no URL.
        ("az://ctr/r.pdf", {"AZURE_STORAGE_ACCOUNT_URL": "http://127.0.0.1:10000/devstoreaccount1"},
         {"report": ("TextMetadataValue", "az://ctr/r.pdf")}),
        ("az://ctr/r.pdf", {}, {"report": ("TextMetadataValue", "az://ctr/r.pdf")}),
    ],
    ids=["local", "s3", "s3-endpoint", "s3-prefixed-endpoint", "gcs", "gcs-emulator", "azure-account",
         "azure-connection-string", "azurite", "azure-unknown"],
)
def test_report_file_entries_per_scheme(uri: str, env: dict[str, str], expected: dict) -> None:
    assert _plain(file_entries("report", uri, "OUT_", env)) == expected


REPORT_FILES = ("report", "report_json", "embedding_view")


@pytest.mark.slow
def test_materialization_names_s3_reports_by_uri(s3: Backend, cli, dagster_home: Path, tmp_path: Path) -> None:
    """A real run with its output on (moto) S3: the tag and report materializations name the report files
    by s3:// URI, and nothing in their metadata is a path."""
    input_dir = tmp_path / "input"
    add_videos(input_dir, ["a.mp4", "b.mp4"], seconds=1)
    output_uri = s3.location("lightly")
    datasets = write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir),
                                   output_uri)
    result = cli("--datasets", str(datasets), "run", "videos-datapool", "--n-samples", "3")
    assert result.code == 0, result.err

    with dg.DagsterInstance.get() as instance:
        for asset in ("tag", "report", "selection", "raw_files"):
            event = instance.get_latest_materialization_event(dg.AssetKey(["videos_datapool", asset]))
            assert event is not None and event.asset_materialization is not None
            meta = event.asset_materialization.metadata
            assert "path" not in meta, (asset, sorted(meta))
            assert not [k for k, v in meta.items() if isinstance(v, dg.PathMetadataValue)], (asset, meta)
            if asset in ("tag", "report"):
                tag = meta["tag"].value
                for name in REPORT_FILES:
                    assert isinstance(meta[name], dg.TextMetadataValue)
                    assert meta[name].value.startswith(f"{output_uri}/datapool/") and tag in meta[name].value
                    assert f"{name}_url" not in meta  # moto is a custom endpoint: no console URL
                assert meta["report"].value.endswith("/report.pdf")
