"""Shared fixtures: a Dagster home, the CLI, a video dataset. Plain helpers (generated media, datasets.yaml,
the tiny embedder) are in helpers.py: import them from there, never from a conftest."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from datapool_pipeline_tests.helpers import CliResult, write_datasets_yaml

# Object-store servers (moto, gcp-storage-emulator, Azurite) as session fixtures, for every test folder.
pytest_plugins = ["datapool_pipeline_tests.storage.servers"]

# Fixtures that start object-store servers (storage/servers.py): a test that uses one is in the slow tier
# whether or not its module says so. (`backend` and `faulty` pick their server at run time, by name.)
SERVER_FIXTURES = frozenset({"s3_endpoint", "gcs_endpoint", "azurite_url", "s3", "gcs", "azure", "backend", "faulty"})


def pytest_configure(config: pytest.Config) -> None:
    # One cache of the embedding runtime's calibration (and ONNX exports) for the whole session, shared by
    # subprocesses (CLI, dagster dev): the first real model load calibrates, later ones reuse its choice.
    os.environ.setdefault("DATAPOOL_CACHE_DIR", tempfile.mkdtemp(prefix="datapool-test-cache-"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
