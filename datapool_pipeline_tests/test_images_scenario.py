"""An IMAGES dataset grown with proportion_samples; wrong-type and corrupt files are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import add_images, add_videos, write_datasets_yaml

# Slow tier: real runs through the CLI (open_clip model, Dagster instance).
pytestmark = pytest.mark.slow


def test_images_with_proportion(cli, tmp_path: Path) -> None:
    input_dir, output = tmp_path / "in", tmp_path / "out"
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "imgs", "IMAGES", str(input_dir), str(output),
                                    extra="    images_per_shard: 16\n")
    ds = ("--datasets", str(yaml_path))
    add_images(input_dir, 40)
    add_videos(input_dir / "clips", ["wrong-type.mp4"], seconds=1)  # a video in an IMAGES dataset
    (input_dir / "notes.txt").write_text("not media")
    (input_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (input_dir / "empty.png").write_bytes(b"")

    first = cli(*ds, "run", "imgs", "--proportion-samples", "0.25")
    assert first.code == 0, first.err
    assert "skipping 2 file(s) that are not images: " in first.err
    store = DatapoolStore(LocalStorage(output))
    state = store.load_state()
    # 40 good images are candidates; the 2 undecodable ones are skipped; 25% of 40 = 10.
    assert state.size == 10 and state.samples["sample_id"].n_unique() == 10
    assert set(state.samples["frame_index"].to_list()) == {-1}
    assert not (output / "frames").exists()  # images are referenced by input key, never copied
    exported = cli(*ds, "export", "imgs", "--tag", "initial-tag").out.splitlines()
    assert len(exported) == 10 and all((input_dir / name).is_file() for name in exported)
    report = json.loads((output / "datapool" / "reports" / state.tags[0] / "report.json").read_text())
    skipped = {item["key"]: item["reason"] for item in report["input"]["skipped"]}
    assert set(skipped) == {"broken.jpg", "empty.png", "clips/wrong-type.mp4", "notes.txt"}
    assert "not an image or video" in skipped["notes.txt"] and "VIDEOS file in a IMAGES" in skipped[
        "clips/wrong-type.mp4"]
    assert report["input"]["raw_files_processed"] == 40

    add_images(input_dir, 12, start=100)
    second = cli(*ds, "run", "imgs", "--use-datapool", "--proportion-samples", "0.25")
    assert second.code == 0, second.err
    assert "not images" not in second.err  # skipped files are reported once, not on every run
    state = store.load_state()
    new_tag = state.tag_samples(state.tags[-1])
    assert new_tag.height == 3  # 25% of the 12 new images, rounded down
    assert all(key.startswith("img_01") for key in new_tag["raw_key"].to_list())
    assert state.size == 13 and state.samples["sample_id"].n_unique() == 13
