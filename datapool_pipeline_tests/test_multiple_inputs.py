"""One dataset grown from several inputs: equal keys in two inputs never collide, adding an input keeps
the datapool, and the report and export say which input each sample came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.storage.combined import CombinedInputs
from datapool_pipeline_tests.helpers import add_images, add_videos, write_datasets_yaml


def _files(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())


def _combined(tmp_path: Path) -> CombinedInputs:
    _files(tmp_path / "main", ["a.jpg", "cam2:hidden.jpg", "m/z.jpg", "zz.jpg"])
    _files(tmp_path / "two", ["a.jpg", "b/c.jpg"])
    _files(tmp_path / "three", ["a.jpg"])
    return CombinedInputs(
        [(None, LocalStorage(tmp_path / "main")), ("cam2", LocalStorage(tmp_path / "two")),
         ("archive", LocalStorage(tmp_path / "three"))]
    )


def test_combined_listing_is_qualified_ordered_and_resumable(tmp_path: Path) -> None:
    storage = _combined(tmp_path)
    keys = [info.key for info in storage.list()]
    # Key order across inputs; the unnamed input's key that reads as cam2's is not listed (ambiguous).
    assert keys == sorted(keys) == ["a.jpg", "archive:a.jpg", "cam2:a.jpg", "cam2:b/c.jpg", "m/z.jpg", "zz.jpg"]
    for i, after in enumerate(keys):
        assert [info.key for info in storage.list(start_after=after)] == keys[i + 1 :]
    assert [info.key for info in storage.list(start_after="cam1")] == keys[2:]
    assert [info.key for info in storage.list(prefix="cam2:b/")] == ["cam2:b/c.jpg"]
    assert [info.key for info in storage.list(prefix="ca")] == ["cam2:a.jpg", "cam2:b/c.jpg"]
    # Reads go to the input the key names; equal keys are different objects.
    assert storage.read_bytes("a.jpg") == b"a.jpg" and storage.read_bytes("cam2:a.jpg") == b"a.jpg"
    assert storage.stat("cam2:b/c.jpg").key == "cam2:b/c.jpg"  # type: ignore[union-attr]
    assert storage.display("cam2:b/c.jpg") == f"{tmp_path / 'two'}/b/c.jpg"
    assert storage.display("m/z.jpg") == f"{tmp_path / 'main'}/m/z.jpg"
    with storage.local_source("archive:a.jpg") as source:
        assert Path(source).parent == tmp_path / "three"


@pytest.mark.slow
def test_adding_an_input_keeps_the_datapool_and_names_the_input(cli, tmp_path: Path) -> None:
    first_in, second_in, output = tmp_path / "in", tmp_path / "cam2", tmp_path / "out"
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "imgs", "IMAGES", str(first_in), str(output))
    ds = ("--datasets", str(yaml_path))
    add_images(first_in, 8)
    first = cli(*ds, "run", "imgs", "--n-samples", "3")
    assert first.code == 0, first.err
    store = DatapoolStore(LocalStorage(output))
    pool = set(store.load_state().samples["sample_id"].to_list())
    assert len(pool) == 3

    # The second datasource holds files under the same keys as the first (other content).
    second_in.mkdir()
    for made in add_images(tmp_path / "staging", 8, start=20):
        index = int(made.stem.split("_")[1]) - 20  # img_0020.jpg -> img_0000.jpg (same extension parity)
        shutil.move(made, second_in / f"img_{index:04d}{made.suffix}")
    assert {p.name for p in second_in.iterdir()} & {p.name for p in first_in.iterdir()}
    yaml_path.write_text(yaml_path.read_text().replace(
        f"    input: {first_in}\n", f"    input:\n      - {first_in}\n      - {{uri: {second_in}, name: cam2}}\n"))

    second = cli(*ds, "run", "imgs", "--use-datapool", "--n-samples", "4")
    assert second.code == 0, second.err
    state = store.load_state()
    assert pool <= set(state.samples["sample_id"].to_list())  # the datapool was kept
    new = state.tag_samples(state.tags[-1])["sample_id"].to_list()
    assert len(new) == 4 and all(s.startswith("cam2:") for s in new)  # only the new input's files were new
    assert state.size == 7 and state.samples["sample_id"].n_unique() == 7

    exported = cli(*ds, "export", "imgs", "--tag", "latest", "--uri").out.splitlines()
    assert sorted(exported) == sorted(str(second_in / s.removeprefix("cam2:")) for s in new)
    assert all(Path(p).is_file() for p in exported)
    report = json.loads((output / "datapool" / "reports" / state.tags[-1] / "report.json").read_text())
    by_input = {i["name"]: i for i in report["inputs"]}
    assert by_input["cam2"]["location"] == str(second_in) and by_input["cam2"]["samples_added"] == 4
    assert by_input[""]["raw_files_processed"] == 0 and by_input["cam2"]["raw_files_processed"] == 8


@pytest.mark.slow
def test_videos_from_two_inputs_with_equal_keys(cli, tmp_path: Path) -> None:
    one, two, output = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    add_videos(one, ["clip.mp4"], first_source=0, seconds=1, fps=5)
    add_videos(two, ["clip.mp4"], first_source=3, seconds=1, fps=5)
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "vids", "VIDEOS", "PLACEHOLDER", str(output))
    inputs = f"    input:\n      - {{uri: {one}, name: one}}\n      - {{uri: {two}, name: two}}\n"
    yaml_path.write_text(yaml_path.read_text().replace("    input: PLACEHOLDER\n", inputs))
    result = cli("--datasets", str(yaml_path), "run", "vids", "--n-samples", "6")
    assert result.code == 0, result.err
    state = DatapoolStore(LocalStorage(output)).load_state()
    keys = set(state.samples["raw_key"].to_list())
    assert keys <= {"one:clip.mp4", "two:clip.mp4"} and len(keys) == 2  # both files, told apart
    exported = cli("--datasets", str(yaml_path), "export", "vids", "--tag", "initial-tag", "--uri").out.splitlines()
    assert len(exported) == 6 and all(Path(p).is_file() for p in exported)
    assert {Path(p).parent.name for p in exported} == {"one:clip.mp4", "two:clip.mp4"}
