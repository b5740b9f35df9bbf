"""Steps of one datapool run in separate processes exchange nothing through a local disk: the vendor
scenario's first two runs with the multiprocess executor, input and output on S3 (moto)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import open_storage
from datapool_pipeline_tests.conftest import add_videos, write_datasets_yaml
from datapool_pipeline_tests.storage.conftest import Backend, upload_folder


@pytest.mark.timeout(900)
def test_steps_in_separate_processes_share_no_local_storage(
    s3: Backend, cli, dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPOOL_RUN_EXECUTOR", "multiprocess")
    input_uri, output_uri = s3.location("raw"), s3.location("lightly")
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "vids", "VIDEOS", input_uri, output_uri)
    local = tmp_path / "videos"
    add_videos(local, ["a.mov", "b.mov"], seconds=1)
    upload_folder(local, input_uri)
    ds = ("--datasets", str(yaml_path))

    first = cli(*ds, "run", "vids", "--n-samples", "6")
    assert first.code == 0, first.err
    add_videos(local / "new", ["c.mov"], first_source=2, seconds=1)
    upload_folder(local / "new", input_uri)
    second = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "3")
    assert second.code == 0, second.err

    output = open_storage(output_uri)
    commits = DatapoolStore(output).load_commits()
    assert [c.n_samples for c in commits] == [6, 3]
    with dg.DagsterInstance.get() as instance:
        for commit in commits:
            starts = instance.all_logs(commit.run_id, of_type=dg.DagsterEventType.STEP_START)
            # Each step ran in its own process.
            assert len(starts) >= 6 and len({e.dagster_event.pid for e in starts}) == len(starts)
            # The steps' outputs live in the output bucket under the run's id ...
            stored = {i.key.rsplit("/", 1)[-1] for i in output.list(f"datapool/runs/{commit.run_id}/")}
            assert {"raw_files.json", "selection.json", "tag.json"} <= stored
    # ... and no step output was written to the instance's local storage (only captured stdout/stderr).
    storage = dagster_home / "storage"
    local = [p for p in storage.rglob("*") if p.is_file() and "compute_logs" not in p.parts] if storage.exists() else []
    assert local == []
