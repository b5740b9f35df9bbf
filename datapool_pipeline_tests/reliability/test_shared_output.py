"""Two datasets must never mix in one output: overlapping outputs fail validation, and a datapool
that belongs to another dataset (or to this dataset under another type) is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapool_pipeline_tests.helpers import TEST_MODEL, add_images, add_videos

# Slow tier: real runs of datasets sharing an output.
pytestmark = pytest.mark.slow

EMBEDDING = f"    embedding: {{model: {TEST_MODEL}, pretrained: none}}\n"


def _yaml(path: Path, datasets: dict[str, tuple[str, Path, Path]]) -> Path:
    body = "datasets:\n"
    for name, (dtype, input_dir, output_dir) in datasets.items():
        body += f"  {name}:\n    type: {dtype}\n    input: {input_dir}\n    output: {output_dir}\n{EMBEDDING}"
    path.write_text(body)
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_overlapping_outputs_fail_validation_before_any_work(cli, tmp_path: Path) -> None:
    videos, images, out = tmp_path / "videos", tmp_path / "images", tmp_path / "out"
    videos.mkdir()
    images.mkdir()
    add_videos(videos, ["a.mp4"], seconds=1)
    datasets = _yaml(
        tmp_path / "datasets.yaml",
        {"v1": ("VIDEOS", videos, out), "v2": ("VIDEOS", videos, out / "v2"), "im": ("IMAGES", images, out)},
    )
    result = cli("--datasets", str(datasets), "run", "v1", "--n-samples", "3")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert "datasets.v1.output" in line and "datasets.v2.output" in line and "overlap" in line
    assert _files(out) == []

    inside = _yaml(tmp_path / "inside.yaml", {"v": ("VIDEOS", videos, videos / "lightly")})
    result = cli("--datasets", str(inside), "run", "v", "--n-samples", "3")
    assert result.code == 2 and "overlap" in result.err and "datasets.v" in result.err


def test_output_of_another_dataset_is_refused(cli, tmp_path: Path) -> None:
    videos, more, images, out = (tmp_path / n for n in ("videos", "more", "images", "out"))
    for folder in (videos, more, images):
        folder.mkdir()
    add_videos(videos, ["a.mp4", "b.mp4"], seconds=1)
    add_videos(more, ["c.mp4"], first_source=2, seconds=1)
    add_images(images, 3)
    first = _yaml(tmp_path / "first.yaml", {"v1": ("VIDEOS", videos, out)})
    assert cli("--datasets", str(first), "run", "v1", "--n-samples", "4").code == 0
    tags_before = cli("--datasets", str(first), "tags", "v1").out
    export_before = cli("--datasets", str(first), "export", "v1", "--tag", "initial-tag").out
    files_before = _files(out)

    # Another datasets.yaml points a second dataset (and an images dataset) at the same output.
    second = _yaml(tmp_path / "second.yaml", {"v2": ("VIDEOS", more, out)})
    third = _yaml(tmp_path / "third.yaml", {"im": ("IMAGES", images, out)})
    for path, name in ((second, "v2"), (third, "im")):
        for args in (("run", name, "--use-datapool", "--n-samples", "2"), ("tags", name),
                     ("export", name, "--tag", "initial-tag")):
            result = cli("--datasets", str(path), *args)
            assert result.code == 2, (args, result.err)
            assert result.out == ""
            line = result.err.strip()
            assert len(line.splitlines()) == 1 and "'v1'" in line and repr(name) in line, line
    # Nothing of v1 changed: the same tags, the same export, the same files.
    assert cli("--datasets", str(first), "tags", "v1").out == tags_before
    assert cli("--datasets", str(first), "export", "v1", "--tag", "initial-tag").out == export_before
    assert _files(out) == files_before

    # The same name with another type: a dataset's type is fixed for its life.
    retyped = _yaml(tmp_path / "retyped.yaml", {"v1": ("IMAGES", images, out)})
    result = cli("--datasets", str(retyped), "run", "v1", "--use-datapool", "--n-samples", "2")
    assert result.code == 2 and "type" in result.err and "VIDEOS" in result.err and "IMAGES" in result.err
    assert _files(out) == files_before
