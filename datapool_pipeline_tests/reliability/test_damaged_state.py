"""Damaged datapool state (issue 15, items 4 and 6).

Each damage of the trial -- garbage or `{}` in a commit manifest, a truncated samples or processed part,
a deleted part, a copied manifest with the next seq -- makes the commands that read the damaged object
fail with one line naming it (never a traceback, never a tag listed twice); `datapool check` reports it
(exit 4) and `check --repair` drops the damaged last commit, after which the dataset runs again.
Temporary files of interrupted writes are counted by `check` and removed at run start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datapool.check import check_datapool
from datapool_pipeline.errors import DamagedStateError
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

DAMAGES = ["garbage_manifest", "empty_manifest", "truncated_samples", "truncated_processed", "deleted_part",
           "copied_manifest"]
EXIT_DAMAGED = 4


def _damage(out: Path, kind: str) -> str:
    """Damage the last commit of the datapool in `out` like the trial did; returns the damaged key."""
    commits = sorted((out / "datapool" / "commits").glob("*.json"))
    last = commits[-1]
    body = json.loads(last.read_text())
    if kind == "garbage_manifest":
        last.write_bytes(b"\x00garbage{")
        return f"datapool/commits/{last.name}"
    if kind == "empty_manifest":
        last.write_text("{}")
        return f"datapool/commits/{last.name}"
    if kind in ("truncated_samples", "truncated_processed"):
        key = body["samples_file" if kind == "truncated_samples" else "processed_file"]
        part = out / key
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
        return key
    if kind == "deleted_part":
        (out / body["samples_file"]).unlink()
        return body["samples_file"]
    assert kind == "copied_manifest"
    copy = last.with_name(f"{body['seq'] + 1:08d}.json")
    copy.write_text(json.dumps({**body, "seq": body["seq"] + 1}))
    return f"datapool/commits/{copy.name}"


def _synthetic(out: Path, n_commits: int = 2, dim: int = 4) -> DatapoolStore:
    """A VIDEOS datapool written through DatapoolStore.commit (frames as small files)."""
    store = DatapoolStore(LocalStorage(out))
    for i in range(n_commits):
        tag, key = f"tag-{i + 1}", f"v{i}.mp4"
        ids = [tables.frame_filename(key, "1-1", f) for f in range(3)]
        samples = pl.DataFrame(
            {"sample_id": ids, "raw_key": [key] * 3, "raw_version": ["1-1"] * 3, "frame_index": [0, 1, 2],
             "timestamp_s": [0.0, 1.0, 2.0], "tag": [tag] * 3, "pick_rank": [0, 1, 2], "pick_distance": [1.0] * 3,
             "pool_distance": [1.0] * 3, "embedding": np.eye(dim, dtype=np.float32)[:3]},
            schema=tables.sample_schema(dim),
        )
        processed = pl.DataFrame(
            {"raw_key": [key], "raw_version": ["1-1"], "raw_size": [1], "media_type": ["VIDEOS"], "status": ["ok"],
             "error": [""], "frames": [3], "tag": [tag]},
            schema=tables.PROCESSED_SCHEMA,
        )
        for sid in ids:
            store.storage.write_bytes(sid, b"png")
        store.commit(store.load_state(), tag=tag, run_id=f"run-{i}", staging_id=f"run-{i}", samples=samples,
                     processed=processed, dataset_type="VIDEOS", embedding_model="m", embedding_dim=dim, config={})
    return store


def _read_everything(store: DatapoolStore) -> None:
    state = store.load_state()
    _ = state.samples, state.processed


@pytest.mark.parametrize("kind", DAMAGES)
def test_each_damage_is_one_line_naming_it_and_check_repairs_it(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    store = _synthetic(out)
    clean = check_datapool(store, dataset_type="VIDEOS")
    assert not clean.findings and clean.stats["checksummed"] == 4, [f.line() for f in clean.findings]

    key = _damage(out, kind)
    with pytest.raises(DamagedStateError) as info:
        _read_everything(store)
    message = str(info.value)
    assert str(out / key) in message and "\n" not in message and "datapool check" in message

    found = check_datapool(store, dataset_type="VIDEOS")
    assert found.damage and any(str(out / key) in f.line() for f in found.damage), [f.line() for f in found.findings]
    assert all("--repair drops this last commit" in f.fix for f in found.damage)

    repaired = check_datapool(store, dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert not repaired.damage and repaired.findings[0].repaired, [f.line() for f in repaired.findings]
    state = store.load_state()
    assert state.tags == ["tag-1"] or (kind == "copied_manifest" and state.tags == ["tag-1", "tag-2"])
    _read_everything(store)
    after = check_datapool(store, dataset_type="VIDEOS")
    assert not after.findings, [f.line() for f in after.findings]  # parts, frames of the dropped tag: gone
    assert sorted(p.relative_to(out).as_posix() for p in (out / "frames").rglob("*.png")) == sorted(
        state.samples["sample_id"].to_list())


def test_damage_before_the_last_commit_is_reported_not_repaired(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = _synthetic(out, n_commits=3)
    first = sorted((out / "datapool" / "commits").glob("*.json"))[0]
    samples = out / json.loads(first.read_text())["samples_file"]
    samples.write_bytes(samples.read_bytes()[:-10])
    result = check_datapool(store, dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert [f.where for f in result.damage] == [str(first)]
    assert "by hand" in result.damage[0].fix and not any(f.repaired for f in result.findings)
    assert len(list((out / "datapool" / "commits").glob("*.json"))) == 3

    # A deleted manifest in the middle: reported (by hand), nothing deleted (its parts are needed to restore it).
    store = _synthetic(tmp_path / "out2", n_commits=3)
    middle = sorted((tmp_path / "out2" / "datapool" / "commits").glob("*.json"))[1]
    middle.unlink()
    with pytest.raises(DamagedStateError, match=str(middle)):
        store.load_commits()
    result = check_datapool(store, dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert [f.where for f in result.damage] == [str(middle)] and "is missing" in result.damage[0].what
    assert len(list((tmp_path / "out2" / "datapool" / "samples").glob("*.parquet"))) == 3


def test_manifests_without_checksums_still_load(tmp_path: Path) -> None:
    """Manifests written before sha256 were recorded load and check (parts checked by row count)."""
    out = tmp_path / "out"
    store = _synthetic(out)
    for path in (out / "datapool" / "commits").glob("*.json"):
        body = json.loads(path.read_text())
        for field in ("samples_sha256", "processed_sha256"):
            body.pop(field)
        path.write_text(json.dumps(body))
    assert store.load_state().samples.height == 6
    result = check_datapool(store, dataset_type="VIDEOS")
    assert not result.findings and result.stats["checksummed"] == 0 and result.stats["parts"] == 4
    # Without a checksum, a truncated part is still named (the Parquet reader's error never shows).
    _damage(out, "truncated_processed")
    with pytest.raises(DamagedStateError, match="not a readable Parquet file"):
        _read_everything(store)


def test_check_counts_temp_files_and_repair_removes_old_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = _synthetic(out)
    old = time.time() - 3600
    made = []
    for folder in ("frames/v0.mp4", "datapool/commits", "datapool/samples"):
        fd, name = tempfile.mkstemp(dir=out / folder, prefix=".tmp-")  # what an interrupted write leaves
        os.close(fd)
        os.utime(name, (old, old))
        made.append(Path(name))
    fd, fresh = tempfile.mkstemp(dir=out / "frames" / "v1.mp4", prefix=".tmp-")
    os.close(fd)
    result = check_datapool(store, dataset_type="VIDEOS")
    assert result.stats["temp_files"] == 4 and not result.damage
    assert any("4 temporary file(s)" in f.what for f in result.findings)
    _read_everything(store)  # listing hides them: they never look like manifests or parts
    repaired = check_datapool(store, dataset_type="VIDEOS", repair=True)
    assert not any(p.exists() for p in made) and Path(fresh).exists()  # a recent one may be a live write
    assert repaired.stats["temp_files"] == 1
    assert store.remove_stale_temp_files(min_age_s=0) == 1 and not Path(fresh).exists()


def test_stale_index_is_reported_not_damage(tmp_path: Path) -> None:
    from datapool_pipeline.datapool.pool_index import INDEX_PREFIX, ids_digest

    out = tmp_path / "out"
    store = _synthetic(out)
    ids = store.load_state().samples["sample_id"].to_list()
    store.storage.write_bytes(f"{INDEX_PREFIX}/m.hnsw", b"index")
    meta = {"fingerprint": "m", "dim": 4, "size": 3, "ids_digest": ids_digest(ids[:3])}
    store.storage.write_bytes(f"{INDEX_PREFIX}/m.json", json.dumps(meta).encode())
    result = check_datapool(store, dataset_type="VIDEOS")
    assert not result.damage and [f.kind for f in result.findings] == ["note"]  # a prefix: extended next run
    store.storage.write_bytes(f"{INDEX_PREFIX}/m.json", json.dumps({**meta, "ids_digest": "x"}).encode())
    result = check_datapool(store, dataset_type="VIDEOS")
    assert not result.damage and [f.kind for f in result.findings] == ["stale"]


def _one_line_error(result, key_location: str) -> None:
    assert "Traceback" not in result.err, result.err[-3000:]
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("datapool: aborted: damaged datapool: ") and key_location in last, result.err[-3000:]


@pytest.mark.slow
def test_damaged_state_through_the_cli_after_real_runs(cli, tmp_path: Path) -> None:
    input_dir, output = tmp_path / "input", tmp_path / "out"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4"], seconds=1)
    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(input_dir), str(output))
    assert cli("--datasets", str(yaml_path), "run", "vids", "--n-samples", "3").code == 0
    add_videos(input_dir, ["b.mp4"], first_source=1, seconds=1)
    assert cli("--datasets", str(yaml_path), "run", "vids", "--use-datapool", "--n-samples", "3").code == 0
    ok = cli("--datasets", str(yaml_path), "check", "vids")
    assert ok.code == 0 and "0 damaged" in ok.out and "4 table part(s) verified (4 against" in ok.out, ok.out
    tags_before = cli("--datasets", str(yaml_path), "tags", "vids").out
    first_tag = tags_before.splitlines()[1].split()[0]
    add_videos(input_dir, ["c.mp4"], first_source=2, seconds=1)  # new work for `run` on every copy

    # What each command reads: tags the manifests, export the manifests and samples parts, run everything.
    reads = {"tags": {"garbage_manifest", "empty_manifest", "copied_manifest"}}
    reads["export"] = reads["tags"] | {"truncated_samples", "deleted_part"}
    for kind in DAMAGES:
        copy = tmp_path / kind
        shutil.copytree(output, copy)
        ds = ("--datasets", str(write_datasets_yaml(tmp_path / f"{kind}.yaml", "vids", "VIDEOS", str(input_dir),
                                                    str(copy))))
        key = _damage(copy, kind)
        where = str(copy / key)
        for command in (("tags", "vids"), ("export", "vids", "--tag", "initial-tag")):
            result = cli(*ds, *command)
            if kind in reads[command[0]]:
                assert result.code == 1, (kind, command, result.out, result.err)
                _one_line_error(result, where)
            else:
                assert result.code == 0 and "Traceback" not in result.err, (kind, command, result.err)
        assert cli(*ds, "tags", "vids").out.count(first_tag) <= 1  # never a tag listed twice
        ran = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "2")
        assert ran.code == 1, (kind, ran.err[-3000:])
        _one_line_error(ran, where)
        assert len(list(copy.glob("datapool/commits/*.json"))) == (3 if kind == "copied_manifest" else 2)

        found = cli(*ds, "check", "vids")
        assert found.code == EXIT_DAMAGED and where in found.out and "Traceback" not in found.err, found.out
        assert "--repair drops this last commit" in found.out
        fixed = cli(*ds, "check", "vids", "--repair")
        assert fixed.code == 0 and "repaired: " in fixed.out and "0 damaged" in fixed.out, fixed.out
        assert cli(*ds, "tags", "vids").out.splitlines()[0].split()[0] != "initial-tag"
        if kind == "truncated_samples":
            # Repaired: the dropped tag's raw file (b) is unprocessed again; the next run commits b and c.
            again = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "4")
            assert again.code == 0, again.err[-3000:]
            assert cli(*ds, "check", "vids").code == 0
            exported = cli(*ds, "export", "vids", "--tag", "initial-tag").out.split()
            assert {p.split("/")[1] for p in exported} == {"a.mp4", "b.mp4", "c.mp4"}
            assert all((copy / p).is_file() for p in exported)


@pytest.mark.slow
def test_temp_files_of_interrupted_writes_are_removed_at_run_start(cli, tmp_path: Path) -> None:
    input_dir, output = tmp_path / "input", tmp_path / "out"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4"], seconds=1)
    ds = ("--datasets", str(write_datasets_yaml(tmp_path / "d.yaml", "vids", "VIDEOS", str(input_dir), str(output))))
    assert cli(*ds, "run", "vids", "--n-samples", "3").code == 0
    # What SIGKILLed atomic writes leave: mkstemp files next to their targets (frames, parts, manifests).
    old = time.time() - 3600
    leftovers = []
    for folder in ("frames/a.mp4", "datapool/samples", "datapool/commits", "datapool/processed", "datapool"):
        fd, name = tempfile.mkstemp(dir=output / folder, prefix=".tmp-")
        os.write(fd, b"partial")
        os.close(fd)
        os.utime(name, (old, old))
        leftovers.append(Path(name))
    fd, recent = tempfile.mkstemp(dir=output / "datapool", prefix=".tmp-")
    os.close(fd)
    counted = cli(*ds, "check", "vids")
    assert counted.code == 0 and "6 temporary file(s) of interrupted writes" in counted.out, counted.out
    assert "6 temporary file(s);" in counted.out.splitlines()[-1]

    add_videos(input_dir, ["b.mp4"], first_source=1, seconds=1)
    ran = cli(*ds, "run", "vids", "--use-datapool", "--n-samples", "2")
    assert ran.code == 0, ran.err[-3000:]
    assert not any(p.exists() for p in leftovers)
    assert Path(recent).exists()  # younger than LEFTOVER_MIN_AGE_S: may be a write in progress
    after = cli(*ds, "check", "vids")
    assert after.code == 0 and "1 temporary file(s) of interrupted writes" in after.out, after.out
