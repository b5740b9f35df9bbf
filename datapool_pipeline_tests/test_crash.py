"""Crash safety: frames a crashed run uploaded are adopted by the next tag (every other crash point:
reliability/test_crash_points.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import FAULT_ENV
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: a real run killed mid-way, then resumed.
pytestmark = pytest.mark.slow


def run_cli(yaml_path: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "datapool_pipeline.cli", "--datasets", str(yaml_path), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )


def frame_files(output: Path) -> set[str]:
    return {p.relative_to(output).as_posix() for p in (output / "frames").rglob("*.png")}


def test_orphaned_uploads_are_adopted_by_the_next_tag(tmp_path: Path, dagster_home: Path) -> None:
    input_dir, output = tmp_path / "in", tmp_path / "out"
    add_videos(input_dir, ["a.mov", "b.mov"], seconds=4)
    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(input_dir), str(output))
    killed = run_cli(yaml_path, "run", "vids", "--n-samples", "30", fault="after_upload")
    assert killed.returncode == -signal.SIGKILL
    orphans = frame_files(output)
    assert len(orphans) == 30

    add_videos(input_dir, ["c.mov", "d.mov"], first_source=2, seconds=4)
    resumed = run_cli(yaml_path, "run", "vids", "--n-samples", "40")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    store = DatapoolStore(LocalStorage(output))
    state = store.load_state()
    ids = state.samples["sample_id"].to_list()
    assert state.size == 40 and len(set(ids)) == 40
    assert orphans <= set(ids)  # adopted, counted towards n_samples
    assert state.commits[-1].adopted == 30
    assert frame_files(output) == set(ids)  # nothing orphaned, nothing written twice
    assert store.staging_ids() == []

