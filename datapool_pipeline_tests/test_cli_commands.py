"""`datapool report`, `--tag latest`, flags after the command, and unknown tags as usage errors."""

from __future__ import annotations

import json

import pytest

from datapool_pipeline_tests.helpers import add_videos

# Slow tier: real runs through the CLI (open_clip model, Dagster instance).
pytestmark = pytest.mark.slow


def test_report_latest_flags_after_command_and_unknown_tag(cli, video_dataset) -> None:
    yaml_path, input_dir, output = video_dataset
    add_videos(input_dir, ["a.mp4"], seconds=1)
    assert cli("--datasets", str(yaml_path), "run", "videos-datapool", "--n-samples", "4").code == 0

    # Global flags are accepted after the command too.
    listed = cli("tags", "videos-datapool", "--datasets", str(yaml_path))
    assert listed.code == 0, listed.err
    tag = listed.out.splitlines()[0].split()[0]
    ds = ("--datasets", str(yaml_path))
    assert cli(*ds, "export", "videos-datapool", "--tag", "latest").out == \
        cli(*ds, "export", "videos-datapool", "--tag", tag).out != ""

    # A tag whose report is lost (a crash after the commit) gets it back.
    report_dir = output / "datapool" / "reports" / tag
    for name in ("report.json", "report.pdf", "embedding_view.html"):
        (report_dir / name).unlink()
    rebuilt = cli("report", "videos-datapool", "--tag", "latest", *ds)
    assert rebuilt.code == 0, rebuilt.err
    assert f"tag {tag}: report" in rebuilt.out and "report.pdf" in rebuilt.out
    assert json.loads((report_dir / "report.json").read_text())["tag"] == tag
    assert (report_dir / "report.pdf").read_bytes().startswith(b"%PDF")

    unknown = cli(*ds, "export", "videos-datapool", "--tag", "nope")
    assert unknown.code == 2 and "no tag named 'nope'" in unknown.err and tag in unknown.err
    assert cli(*ds, "report", "videos-datapool", "--tag", "nope").code == 2
