"""Honest exit codes after a commit, and `resume` that finishes its own run or refuses stale work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datapool_pipeline.workflow.faults import FAULT_ENV
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: real runs, killed and resumed.
pytestmark = pytest.mark.slow


def _report_tag(output: Path, tag: str) -> str:
    return json.loads((output / "datapool" / "reports" / tag / "report.json").read_text())["tag"]


def test_report_failure_after_commit_then_resume_and_superseded_runs(cli, tmp_path: Path, dagster_home) -> None:
    input_dir, output = tmp_path / "input", tmp_path / "out"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4"], seconds=1)
    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(input_dir), str(output))
    ds = ("--datasets", str(yaml_path))

    # The report's location cannot be written (a file where its folder belongs): the commit lands,
    # the report step fails. The CLI must say the tag was committed, with its own exit code.
    (output / "datapool").mkdir(parents=True)
    (output / "datapool" / "reports").write_text("not a folder")
    first = cli(*ds, "run", "vids", "--n-samples", "4")
    assert first.code == 3, first.err
    line = first.err.strip().splitlines()[-1]
    assert "committed" in line and "report" in line and "aborted" not in line
    tag1 = re.search(r"tag (\S+) was committed", line).group(1)
    run1 = re.search(r"Dagster run ([0-9a-f-]+)", line).group(1)
    assert [ln.split()[0] for ln in cli(*ds, "tags", "vids").out.splitlines()] == [tag1, "initial-tag"]

    # A later run commits another tag; resuming the first run then writes the FIRST tag's report.
    (output / "datapool" / "reports").unlink()
    add_videos(input_dir, ["b.mp4"], first_source=1, seconds=1)
    second = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "3")
    assert second.code == 0, second.err
    tag2 = cli(*ds, "tags", "vids").out.splitlines()[0].split()[0]
    report2 = output / "datapool" / "reports" / tag2 / "report.json"
    before = report2.read_bytes()
    resumed = cli(*ds, "resume", "vids", "--run-id", run1)
    assert resumed.code == 0, resumed.err
    assert _report_tag(output, tag1) == tag1
    assert report2.read_bytes() == before  # the newest tag's report is untouched

    # A run killed before its commit, then superseded by a new run's commit: resume refuses it.
    add_videos(input_dir, ["c.mp4"], first_source=2, seconds=1)
    killed = subprocess.run(
        [sys.executable, "-m", "datapool_pipeline.cli", *ds, "run", "vids", "--use-datapool", "--n-samples", "2"],
        env={**os.environ, FAULT_ENV: "after_selection"}, capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    third = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "2")
    assert third.code == 0, third.err
    tags_before = cli(*ds, "tags", "vids").out
    stale = cli(*ds, "resume", "vids")
    assert stale.code == 1
    assert "superseded" in stale.err and len(stale.err.strip().splitlines()) <= 2
    assert cli(*ds, "tags", "vids").out == tags_before
