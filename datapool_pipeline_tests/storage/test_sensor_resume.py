"""The sensor's listing resumes where it stopped: a tick after a complete pass lists only the keys after
the cursor (one listing request for a few new objects, on a local folder, moto S3, gcp-storage-emulator
and Azurite), a key written before the cursor is found by the periodic full pass, and a version-1 cursor
is migrated without losing files."""

from __future__ import annotations

import json
from pathlib import Path

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import load_datasets
from datapool_pipeline.launch import ScanCursor, ScanResult, scan_new_files
from datapool_pipeline.storage import Storage, open_storage
from datapool_pipeline_tests.storage.backends import Backend, count_list_requests


class Sensor:
    """scan_new_files tick after tick, applying each result as the daemon would (partitions added)."""

    def __init__(self, tmp_path: Path, input_uri: str, every: int, max_objects: int = 1000) -> None:
        path = tmp_path / "datasets.yaml"
        path.write_text(
            f"""datasets:
  clips:
    type: VIDEOS
    input: {input_uri}
    output: {tmp_path / 'out'}
    embedding: {{model: ViT-S-32, pretrained: none}}
    sensor: {{enabled: true, files_per_run: 1000, max_runs_per_tick: 10, max_objects_per_tick: {max_objects}}}
"""
        )
        self.spec = load_datasets(path)["clips"]
        self.store = DatapoolStore(open_storage(str(tmp_path / "out")))
        self.input = open_storage(input_uri)
        self.every = every
        self.partitions: list[str] = []
        self.cursor = ScanCursor()

    def tick(self) -> tuple[ScanResult, list[str]]:
        """One tick; returns the scan and the keys of the files it claimed."""
        scan = scan_new_files(self.spec, self.store, self.input, self.partitions, self.cursor,
                              full_listing_every_ticks=self.every)
        self.partitions += scan.new_partitions
        self.cursor = ScanCursor.parse(scan.cursor.serialize())  # as stored between ticks
        claimed = self.store.shard_members(scan.new_partitions)["raw_key"].to_list()
        return scan, sorted(claimed)


def _add(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        storage.write_bytes(key, key.encode())  # the sensor never reads the content


def test_resumed_ticks_list_only_new_keys_and_a_full_pass_finds_earlier_ones(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sensor = Sensor(tmp_path, str(tmp_path / "in"), every=3, max_objects=20)
    first = [f"cam/k{i:03d}.mp4" for i in range(50)]
    _add(sensor.input, [*first, "cam/a-notes.txt"])

    claimed: list[str] = []
    for _ in range(3):  # 51 objects, 20 per tick
        claimed += sensor.tick()[1]
    assert claimed == first and sensor.cursor.passes == 1 and sensor.cursor.after == "cam/k049.mp4"

    # New keys after the cursor: exactly those are listed and claimed.
    _add(sensor.input, ["cam/k050.mp4", "cam/k051.mp4", "dog/a.mp4"])
    scan, new = sensor.tick()
    assert new == ["cam/k050.mp4", "cam/k051.mp4", "dog/a.mp4"] and scan.listed == 3 and scan.swept == 0
    assert sensor.cursor.after == "dog/a.mp4"

    # A key written before the cursor is not listed by the incremental ticks...
    _add(sensor.input, ["cam/early.mp4"])
    for _ in range(2):
        scan, new = sensor.tick()
        assert new == [] and scan.listed == 0
    assert sensor.cursor.ticks == 3 and sensor.cursor.sweep is None
    # ... until the full pass (due after 3 incremental ticks) reaches it, 20 objects per tick.
    found: list[str] = []
    swept = 0
    while True:
        _add(sensor.input, [f"dog/b{swept:03d}.mp4"])  # still arriving during the pass: found at once
        scan, new = sensor.tick()
        assert f"dog/b{swept:03d}.mp4" in new
        found += [k for k in new if not k.startswith("dog/")]
        swept += 1
        if sensor.cursor.sweep is None:
            break
    assert found == ["cam/early.mp4"] and swept == 3 and sensor.cursor.passes == 2 and sensor.cursor.ticks == 0


def test_a_version_1_cursor_resumes_after_its_key_and_checks_the_keys_before_it(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sensor = Sensor(tmp_path, str(tmp_path / "in"), every=100)
    _add(sensor.input, ["a.mp4", "sub/b.mp4", "z.mp4"])
    # Version 1 walked a local folder files-first: "z.mp4" came before "sub/b.mp4", which was never listed.
    sensor.cursor = ScanCursor.parse(json.dumps({"after": "z.mp4", "passes": 0}))
    assert sensor.cursor.after == "z.mp4" and sensor.cursor.sweep == ""
    scan, new = sensor.tick()
    # The full pass lists every key up to the cursor (none was claimed in this test: all three are new).
    assert new == ["a.mp4", "sub/b.mp4", "z.mp4"] and scan.swept == 3 and scan.listed == 3
    assert sensor.cursor.sweep is None and sensor.cursor.passes == 1
    assert ScanCursor.parse(json.dumps({"after": "", "passes": 4})) == ScanCursor(passes=4)
    assert ScanCursor.parse("not json") == ScanCursor()


def test_object_store_tick_costs_the_new_keys_not_the_bucket(backend: Backend, tmp_path: Path) -> None:
    uri = backend.location("raw")
    sensor = Sensor(tmp_path, uri, every=2, max_objects=1000)
    old = [f"clip_{i:04d}.mp4" for i in range(0, 200, 2)]
    _add(sensor.input, old)
    sensor.input.page_size = 10
    assert sensor.tick()[1] == old and sensor.cursor.passes == 1

    calls = count_list_requests(backend, sensor.input)
    _add(sensor.input, ["clip_0500.mp4", "clip_0501.mp4", "clip_0502.mp4"])
    scan, new = sensor.tick()
    assert new == ["clip_0500.mp4", "clip_0501.mp4", "clip_0502.mp4"] and scan.listed == 3
    if backend.name != "gcs":  # gcp-storage-emulator ignores startOffset (the real service does not)
        assert len(calls) == 1  # one page: the keys after the cursor, not the 10 pages of the bucket

    # Inserted between old keys (before the cursor): found by the full pass after 2 incremental ticks.
    _add(sensor.input, ["clip_0051.mp4"])
    assert sensor.tick()[1] == []
    assert sensor.tick()[1] == ["clip_0051.mp4"] and sensor.cursor.passes == 2
    assert sensor.tick()[1] == [] and sensor.cursor.sweep is None
