"""The README's Python API example, executed as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: real runs through the Python API (open_clip model, Dagster instance).
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs(tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("### Python API", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    add_videos(tmp_path / "in", ["a.mp4", "b.mp4"], seconds=1)
    write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", "in", "out")
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - the documented example itself

    commit, pool, files, samples = scope["commit"], scope["pool"], scope["files"], scope["samples"]
    assert commit.n_samples == 10 == commit.datapool_size
    assert pool.tags() == [(commit.tag, 10), ("initial-tag", 10)]
    assert len(files) == 10 and all((tmp_path / "out" / f).is_file() for f in files)
    assert samples.height == 10 and "embedding" in samples.columns and set(samples["sample_id"]) == set(files)
    assert pool.export("latest", uri=True)[0].startswith(str(tmp_path / "out"))
    printed = capsys.readouterr().out
    assert f"{commit.tag} 10 10" in printed and "report.pdf" in printed
