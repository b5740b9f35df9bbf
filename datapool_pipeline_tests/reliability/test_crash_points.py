"""A SIGKILL at every step boundary (and mid-upload), recovered by Dagster re-execution from failure
(`datapool resume`) or by a brand-new run, ends with the datapool a crash-free run produces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.faults import FAULT_ENV, FAULT_POINTS
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: real runs killed (SIGKILL) at each crash point, then resumed.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("input")
    add_videos(folder, ["a.mov", "b.mov"], seconds=1.5)  # one shard of 2 videos, 15 frames each
    return folder


@pytest.fixture(scope="module")
def crash_free(clip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    from datapool_pipeline.cli import main

    root = tmp_path_factory.mktemp("reference")
    yaml_path = write_datasets_yaml(root / "d.yaml", "vids", "VIDEOS", str(clip_folder), str(root / "out"))
    os.environ["DAGSTER_HOME"] = str(root / "home")
    try:
        assert main(["--datasets", str(yaml_path), "run", "vids", "--n-samples", "12"]) == 0
    finally:
        del os.environ["DAGSTER_HOME"]
    return set(DatapoolStore(LocalStorage(root / "out")).load_state().samples["sample_id"])


@pytest.mark.parametrize("recovery", ["resume", "new_run"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_crash_then_recover(point, recovery, clip_folder, crash_free, tmp_path, cli) -> None:
    output = tmp_path / "out"
    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(clip_folder), str(output))
    env = {**os.environ, FAULT_ENV: point}
    killed = subprocess.run(
        [sys.executable, "-m", "datapool_pipeline.cli", "--datasets", str(yaml_path), "run", "vids",
         "--n-samples", "12"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    if recovery == "resume":
        result = cli("--datasets", str(yaml_path), "resume", "vids")
        assert result.code == 0, result.err[-3000:]
    else:
        result = cli("--datasets", str(yaml_path), "run", "vids", "--use-datapool", "--n-samples", "12")
        if point == "after_commit":
            assert result.code == 1 and "no new raw files" in result.err
        else:
            assert result.code == 0, result.err[-3000:]

    store = DatapoolStore(LocalStorage(output))
    state = store.load_state()
    ids = state.samples["sample_id"].to_list()
    assert len(state.commits) == 1 and len(ids) == len(set(ids)) == 12
    assert set(ids) == crash_free
    on_disk = {p.relative_to(output).as_posix() for p in (output / "frames").rglob("*.png")}
    assert on_disk == crash_free  # uploads of the crashed attempt reused, none orphaned
    assert store.staging_ids() == []
    assert cli("--datasets", str(yaml_path), "tags", "vids").out.splitlines()[-1].split() == ["initial-tag", "12"]
