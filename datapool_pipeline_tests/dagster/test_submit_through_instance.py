"""`datapool run` through the instance's run coordinator and launcher: the run executes in a process the
instance launched, the CLI follows it to the end, with the same exit codes and one-line reasons."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

INSTANCE_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster.core.launcher
  class: DefaultRunLauncher
telemetry:
  enabled: false
"""


@pytest.mark.timeout(600)
@pytest.mark.slow  # runs submitted through a real Dagster instance's launcher
def test_run_is_launched_by_the_instance_and_followed(cli, tmp_path: Path, dagster_home: Path, monkeypatch) -> None:
    (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML)
    monkeypatch.setenv("DATAPOOL_LAUNCH", "instance")
    input_dir, output = tmp_path / "input", tmp_path / "out"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4", "b.mp4"], seconds=1)
    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(input_dir), str(output))
    ds = ("--datasets", str(yaml_path))

    first = cli(*ds, "run", "vids", "--n-samples", "5")
    assert first.code == 0, first.err
    assert "submitting run" in first.err and "DefaultRunLauncher" in first.err
    assert "step vids__selection started" in first.err  # progress followed from the event log
    store = DatapoolStore(LocalStorage(output))
    commit = store.load_commits()[-1]
    assert commit.n_samples == 5 and f"tag {commit.tag}: 5 samples added" in first.out
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(commit.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        steps = instance.all_logs(commit.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        # Executed by a process the instance's launcher started, not by the CLI's process.
        assert steps and all(e.dagster_event.pid != os.getpid() for e in steps)

    # A failure inside the launched run after the commit: exit 3 with the one line, as in-process.
    (output / "datapool" / "reports").rename(output / "datapool" / "reports-moved")
    (output / "datapool" / "reports").write_text("not a folder")
    add_videos(input_dir, ["c.mp4"], first_source=2, seconds=1)
    second = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "2")
    assert second.code == 3, second.err
    assert "was committed" in second.err.strip().splitlines()[-1]

    # Nothing new: aborted before anything is submitted.
    third = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "2")
    assert third.code == 1 and "no new raw files" in third.err and "submitting" not in third.err


def test_launch_mode_follows_the_instance_launcher(dagster_home: Path, monkeypatch) -> None:
    from datapool_pipeline.errors import ConfigError
    from datapool_pipeline.submit import launch_mode

    with dg.DagsterInstance.get() as instance:
        assert launch_mode(instance) == "here"  # DefaultRunLauncher: execute in this process
        monkeypatch.setenv("DATAPOOL_LAUNCH", "instance")
        assert launch_mode(instance) == "instance"
        monkeypatch.setenv("DATAPOOL_LAUNCH", "cluster")
        with pytest.raises(ConfigError, match="DATAPOOL_LAUNCH must be one of auto, here, instance"):
            launch_mode(instance)
