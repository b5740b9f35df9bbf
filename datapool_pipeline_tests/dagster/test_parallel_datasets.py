"""Runs of different datasets execute at the same time: each dataset has its own concurrency pools,
so a run of one never waits for a run of another (runs of one dataset are serialised: test_e2e.py,
reliability/test_concurrent_runs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from datapool_pipeline.assets.runs import DATASET_TAG
from datapool_pipeline_tests.helpers import TEST_MODEL, add_videos

# Slow tier: real runs of two datasets at once (open_clip model, Dagster instance).
pytestmark = pytest.mark.slow


def test_runs_of_two_datasets_overlap(tmp_path: Path, dagster_home: Path) -> None:
    datasets = ["left", "right"]
    blocks = []
    for i, name in enumerate(datasets):
        add_videos(tmp_path / name, [f"{name}.mov"], first_source=i, seconds=8)
        blocks.append(
            f"  {name}:\n    type: VIDEOS\n    input: {tmp_path / name}\n    output: {tmp_path / 'out' / name}\n"
            f"    embedding: {{model: {TEST_MODEL}, pretrained: none}}\n"
        )
    yaml_path = tmp_path / "datasets.yaml"
    yaml_path.write_text("datasets:\n" + "".join(blocks))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "datapool_pipeline.cli", "--datasets", str(yaml_path), "run", name,
             "--n-samples", "5"],
            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in datasets
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]

    with dg.DagsterInstance.get() as instance:
        windows = {}
        for name in datasets:
            (run,) = instance.get_runs(filters=dg.RunsFilter(tags={DATASET_TAG: name}))
            assert run.status == dg.DagsterRunStatus.SUCCESS
            (step,) = [s for s in instance.get_run_step_stats(run.run_id) if s.step_key.endswith("embeddings")]
            windows[name] = (step.start_time, step.end_time)
    (start_a, end_a), (start_b, end_b) = windows.values()
    # Both datasets' embedding steps (each in its own dataset's pool) were executing at the same time.
    assert start_a < end_b and start_b < end_a, windows
