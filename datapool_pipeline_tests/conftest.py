"""Shared fixtures: generated media (real ffmpeg test sources), datasets.yaml, a Dagster home, the CLI."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datapool_pipeline.demo import make_image, make_videos

# A real open_clip architecture, small enough for CI (about 45 frames/s on 2 cores), random weights.
TEST_MODEL = "ViT-S-32"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def write_datasets_yaml(
    path: Path, name: str, dtype: str, input_uri: str, output_uri: str, *, extra: str = ""
) -> Path:
    path.write_text(
        f"""datasets:
  {name}:
    type: {dtype}
    input: {input_uri}
    output: {output_uri}
    embedding:
      model: {TEST_MODEL}
      pretrained: none
      batch_size: 32
{extra}"""
    )
    return path


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    repo_yaml = Path(__file__).resolve().parents[1] / "dagster.yaml"
    (home / "dagster.yaml").write_text(repo_yaml.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def cli(dagster_home: Path) -> Callable[..., CliResult]:
    """Run `datapool ...` in this process (so the model stays loaded between runs)."""
    from datapool_pipeline.cli import main

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def video_dataset(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(datasets.yaml, input folder, output folder) of a VIDEOS dataset named 'videos-datapool'."""
    input_dir = tmp_path / "input" / "videos"
    output_dir = tmp_path / "lightly"
    input_dir.mkdir(parents=True)
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir),
                                    str(output_dir))
    yield yaml_path, input_dir, output_dir


def add_videos(folder: Path, names: list[str], first_source: int = 0, seconds: float = 5.0, fps: int = 10) -> None:
    """Real H.264 videos from ffmpeg test sources (different source per video)."""
    make_videos(folder, names, first_source=first_source, seconds=seconds, fps=fps)


def add_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """Still images of varied content: different test sources, times and formats."""
    sources = ["testsrc2", "mandelbrot", "smptehdbars", "rgbtestsrc", "testsrc"]
    paths = []
    for i in range(start, start + count):
        ext = ".png" if i % 2 else ".jpg"
        paths.append(make_image(folder / f"img_{i:04d}{ext}", sources[i % len(sources)], t=(i * 0.7) % 9))
    return paths


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
