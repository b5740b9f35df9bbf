"""Two `datapool run` processes for the same dataset started at the same moment: one commits, the
other waits or aborts cleanly, and the datapool is what a single run produces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: concurrent real runs.
pytestmark = pytest.mark.slow


def test_two_simultaneous_runs_commit_once(tmp_path: Path, dagster_home: Path) -> None:
    input_dir, output = tmp_path / "in", tmp_path / "out"
    add_videos(input_dir, ["a.mov", "b.mov"], seconds=1.5)
    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(input_dir), str(output))
    command = [sys.executable, "-m", "datapool_pipeline.cli", "--datasets", str(yaml_path), "run", "vids",
               "--use-datapool", "--n-samples", "12"]
    procs = [
        subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes in ([0, 0], [0, 1]), [err[-2000:] for _, _, err in outcomes]
    for code, _, err in outcomes:
        if code == 1:
            reason = [line for line in err.splitlines() if line.startswith(("datapool: aborted", "datapool: error"))]
            assert reason and ("another run" in reason[-1] or "no new raw files" in reason[-1]), err[-2000:]

    store = DatapoolStore(LocalStorage(output))
    state = store.load_state()
    ids = state.samples["sample_id"].to_list()
    assert len(ids) == len(set(ids)) == 12  # exactly one run's selection, nothing twice
    assert len([c for c in state.commits if c.n_samples]) == 1
    on_disk = {p.relative_to(output).as_posix() for p in (output / "frames").rglob("*.png")}
    assert on_disk == set(ids)
    processed = state.processed.select(["raw_key", "raw_version"])
    assert processed.height == processed.unique().height == 2
