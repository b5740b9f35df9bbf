"""Checkpoints of the datapool state (issue 12 item 2): loads read a bounded number of objects, give
what the whole chain gives, survive a crash mid-checkpoint, and a damaged checkpoint is skipped by
loads (they fall back to the previous checkpoint or the manifests) and reported and repaired by check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datapool import store as store_module
from datapool_pipeline.datapool.check import check_datapool
from datapool_pipeline.errors import DamagedStateError
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.reliability.test_damaged_state import _synthetic


@pytest.fixture(autouse=True)
def every_three(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 3)


class Counting:
    def __init__(self, storage: LocalStorage) -> None:
        self.reads: list[str] = []
        self.lists: list[tuple[str, str]] = []
        read, listing = storage.read_bytes, storage.list

        def read_bytes(key: str) -> bytes:
            self.reads.append(key)
            return read(key)

        def list_(prefix: str = "", start_after: str = ""):  # type: ignore[no-untyped-def]
            self.lists.append((prefix, start_after))
            return listing(prefix, start_after)

        storage.read_bytes = read_bytes  # type: ignore[method-assign]
        storage.list = list_  # type: ignore[method-assign]


def _fresh(out: Path) -> tuple[DatapoolStore, Counting]:
    storage = LocalStorage(out)
    return DatapoolStore(storage), Counting(storage)


def _registry_part(store: DatapoolStore, i: int, when: datetime) -> None:
    rows = pl.DataFrame(
        {"shard_id": [f"v-{i}"], "raw_key": [f"v{i}.mp4"], "raw_version": ["1-1"], "raw_size": [1],
         "media_type": ["VIDEOS"]},
        schema=tables.REGISTRY_SCHEMA,
    )
    store.append_registry(rows, now=when)


def _everything(store: DatapoolStore) -> tuple[list, pl.DataFrame, pl.DataFrame]:
    state = store.load_state()
    keys = ["raw_key", "raw_version"]
    return state.commits, state.processed.sort(keys), store.read_registry().sort("shard_id")


def _whole_chain(out: Path) -> tuple[list, pl.DataFrame, pl.DataFrame]:
    store = DatapoolStore(LocalStorage(out))
    store.checkpoint_keys = lambda: []  # type: ignore[method-assign]
    return _everything(store)


def test_loads_from_checkpoint_equal_the_whole_chain_and_read_a_bounded_number_of_objects(tmp_path: Path) -> None:
    out = tmp_path / "out"
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store = _synthetic(out, n_commits=12)
    for i in range(12):
        _registry_part(store, i, t0 + timedelta(hours=i))
    # The registry parts were written after the commits: a new commit checkpoints them.
    assert store.checkpoint_error is None
    assert sorted(p.name for p in (out / "datapool" / "checkpoints").iterdir()) == ["00000009.json", "00000012.json"]
    assert len(list((out / "datapool" / "compacted").iterdir())) == 4  # 2 kept checkpoints x (processed, registry)

    fresh, counting = _fresh(out)
    commits, processed, registry = _everything(fresh)
    whole = _whole_chain(out)
    assert commits == whole[0] and processed.equals(whole[1]) and registry.equals(whole[2])
    assert len(commits) == 12 and processed.height == 12 and registry.height == 12
    # checkpoint 12 (read once, cached), manifest 12 (to match it), its compacted processed and registry,
    # and the 12 registry parts written after the checkpoint's registry was compacted.
    manifests = [k for k in counting.reads if k.startswith("datapool/commits/")]
    assert manifests == ["datapool/commits/00000012.json"], counting.reads
    assert ("datapool/commits/", "datapool/commits/00000011.json") in counting.lists
    assert not any(k.startswith("datapool/processed/") for k in counting.reads)
    assert [p for p, _ in counting.lists].count(store_module.CHECKPOINTS) == 1  # state and registry: one listing


def test_registry_parts_after_a_checkpoint_are_read_and_old_ones_are_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = _synthetic(out, n_commits=1)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(5):
        _registry_part(store, i, t0 + timedelta(hours=i))
    _registry_part(store, 5, t0 + timedelta(hours=4, minutes=30))  # within the window of the newest
    state = store.load_state()
    checkpoint = store.write_checkpoint(state)
    assert checkpoint is not None and checkpoint.registry.rows == 6
    assert checkpoint.registry_after.endswith("T033000") and len(checkpoint.registry_covered) == 2
    _registry_part(store, 6, t0 + timedelta(hours=4, minutes=10))  # late: sorts inside the window
    _registry_part(store, 7, t0 + timedelta(hours=9))
    fresh, counting = _fresh(out)
    registry = fresh.read_registry()
    assert sorted(registry["shard_id"].to_list()) == [f"v-{i}" for i in range(8)]
    parts = [k for k in counting.reads if k.startswith(store_module.REGISTRY)]
    assert len(parts) == 2, parts  # the two written after the checkpoint, not the six it compacted


def test_output_without_checkpoints_loads_and_the_next_commit_writes_one(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 10**9)
    store = _synthetic(out, n_commits=5)
    assert not (out / "datapool" / "checkpoints").exists()
    whole = _whole_chain(out)
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 3)
    assert store.load_state().checkpoint is None and _everything(store)[0] == whole[0]
    store = _synthetic_more(out, 1)
    assert [p.name for p in (out / "datapool" / "checkpoints").iterdir()] == ["00000006.json"]
    assert DatapoolStore(LocalStorage(out)).load_state().checkpoint_seq == 6


def _synthetic_more(out: Path, n: int) -> DatapoolStore:
    """Commit `n` more tags like _synthetic does (tags and keys after the existing ones)."""
    import numpy as np

    store = DatapoolStore(LocalStorage(out))
    for _ in range(n):
        state = store.load_state()
        i = state.head_seq
        tag, key = f"tag-{i + 1}", f"v{i}.mp4"
        ids = [tables.frame_filename(key, "1-1", 0)]
        samples = pl.DataFrame(
            {"sample_id": ids, "raw_key": [key], "raw_version": ["1-1"], "frame_index": [0], "timestamp_s": [0.0],
             "tag": [tag], "pick_rank": [0], "pick_distance": [1.0], "pool_distance": [1.0],
             "embedding": np.eye(4, dtype=np.float32)[:1]},
            schema=tables.sample_schema(4),
        )
        processed = pl.DataFrame(
            {"raw_key": [key], "raw_version": ["1-1"], "raw_size": [1], "media_type": ["VIDEOS"], "status": ["ok"],
             "error": [""], "frames": [1], "tag": [tag]},
            schema=tables.PROCESSED_SCHEMA,
        )
        store.storage.write_bytes(ids[0], b"png")
        store.commit(state, tag=tag, run_id=f"run-{i}", staging_id=f"run-{i}", samples=samples, processed=processed,
                     dataset_type="VIDEOS", embedding_model="m", embedding_dim=4, config={})
        assert store.checkpoint_error is None, store.checkpoint_error
    return store


def _damage_checkpoint(out: Path, kind: str) -> str:
    path = sorted((out / "datapool" / "checkpoints").glob("*.json"))[-1]
    head, _, body = path.read_bytes().partition(b"\n")
    header = json.loads(head)
    if kind == "garbage":
        path.write_bytes(b"\x00garbage")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "changed_commit":
        path.write_bytes(head + b"\n" + body.replace(b'"n_samples":3', b'"n_samples":4', 1))
    elif kind in ("truncated_processed", "deleted_registry"):
        part = out / header["processed" if kind == "truncated_processed" else "registry"]["key"]
        if kind == "deleted_registry":
            part.unlink()
        else:
            part.write_bytes(part.read_bytes()[:-10])
    return f"datapool/checkpoints/{path.name}"


@pytest.mark.parametrize("kind", ["garbage", "truncated", "changed_commit", "truncated_processed", "deleted_registry"])
def test_a_damaged_checkpoint_is_skipped_by_loads_reported_by_check_and_repaired(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    store = _synthetic(out, n_commits=7)  # checkpoints 3 and 6
    whole = _whole_chain(out)
    key = _damage_checkpoint(out, kind)
    fresh = DatapoolStore(LocalStorage(out))
    commits, processed, registry = _everything(fresh)
    assert commits == whole[0] and processed.equals(whole[1]) and registry.equals(whole[2])
    if kind in ("garbage", "truncated", "changed_commit"):
        assert fresh.load_state().checkpoint_seq == 3  # the previous checkpoint

    found = check_datapool(store, dataset_type="VIDEOS")
    assert [f.where for f in found.damage] == [str(out / key)], [f.line() for f in found.findings]
    assert "checkpoint" in found.damage[0].what and "--repair deletes it" in found.damage[0].fix
    repaired = check_datapool(store, dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert not repaired.damage and repaired.findings[0].repaired, [f.line() for f in repaired.findings]
    assert not (out / key).exists()
    after = check_datapool(store, dataset_type="VIDEOS")
    assert not after.findings, [f.line() for f in after.findings]  # its parts went too
    _synthetic_more(out, 1)  # 8 - 3 >= 3: the next commit checkpoints again
    assert DatapoolStore(LocalStorage(out)).load_state().checkpoint_seq == 8


def test_a_checkpoint_unlike_the_manifests_is_damage(tmp_path: Path) -> None:
    """A checkpoint that verifies on its own but holds other commits than the manifests (written by
    hand, or a manifest changed since): check reports it; a load notices when its last commit differs."""
    out = tmp_path / "out"
    store = _synthetic(out, n_commits=6)
    manifest = out / "datapool" / "commits" / "00000002.json"
    body = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**body, "created_at": "2020-01-01T00:00:00+00:00"}))
    found = check_datapool(store, dataset_type="VIDEOS")
    assert {f.where for f in found.damage} == {str(out / "datapool" / "checkpoints" / f"{s:08d}.json") for s in (3, 6)}
    assert all("unlike its manifest" in f.what for f in found.damage)


def test_dropping_a_damaged_last_commit_drops_its_checkpoint(tmp_path: Path) -> None:
    from datapool_pipeline_tests.reliability.test_damaged_state import _damage

    out = tmp_path / "out"
    store = _synthetic(out, n_commits=3)  # checkpoint 3 holds commit 3
    key = _damage(out, "truncated_samples")  # of commit 3: a checkpoint cannot restore a part
    with pytest.raises(DamagedStateError, match=key.rsplit("/", 1)[-1]):
        _ = DatapoolStore(LocalStorage(out)).load_state().samples
    repaired = check_datapool(store, dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert not repaired.damage, [f.line() for f in repaired.findings]
    assert "checkpoint" in repaired.findings[0].what
    assert not list((out / "datapool" / "checkpoints").glob("*.json"))
    fresh = DatapoolStore(LocalStorage(out))
    assert fresh.load_state().tags == ["tag-1", "tag-2"]
    _synthetic_more(out, 1)  # commit 3 again, and a new checkpoint of it
    state = DatapoolStore(LocalStorage(out)).load_state()
    assert state.checkpoint_seq == 3 and state.tags == ["tag-1", "tag-2", "tag-3"]
    assert not check_datapool(store, dataset_type="VIDEOS").findings


@pytest.mark.parametrize("damage", ["garbage_last", "deleted_middle", "deleted_last"])
def test_manifests_a_checkpoint_holds_are_restored_by_repair(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "out"
    store = _synthetic(out, n_commits=3)  # checkpoint 3 holds commits 1..3
    commits = out / "datapool" / "commits"
    original = {p.name: p.read_bytes() for p in commits.glob("*.json")}
    name = "00000002.json" if damage == "deleted_middle" else "00000003.json"
    if damage == "garbage_last":
        (commits / name).write_bytes(b"\x00garbage{")
        with pytest.raises(DamagedStateError, match=name):
            DatapoolStore(LocalStorage(out)).load_state()
    else:
        (commits / name).unlink()
    if damage == "deleted_last":  # the chain alone would end at #2 silently: the checkpoint tells
        with pytest.raises(DamagedStateError, match=f"{name} is missing, but checkpoint"):
            DatapoolStore(LocalStorage(out)).load_state()
    found = check_datapool(store, dataset_type="VIDEOS")
    assert [f.where for f in found.damage] == [str(commits / name)], [f.line() for f in found.findings]
    assert "--repair restores it from checkpoint" in found.damage[0].fix
    repaired = check_datapool(store, dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert not repaired.damage and "restored commit" in repaired.findings[0].what, [
        f.line() for f in repaired.findings]
    assert {p.name: p.read_bytes() for p in commits.glob("*.json")} == original  # the bytes a commit wrote
    assert DatapoolStore(LocalStorage(out)).load_state().tags == ["tag-1", "tag-2", "tag-3"]
    assert not check_datapool(store, dataset_type="VIDEOS").findings


@pytest.mark.parametrize("damage", ["garbage_manifest", "copied_manifest"])
def test_damage_after_a_checkpoint_is_one_line_naming_it(tmp_path: Path, damage: str) -> None:
    from datapool_pipeline_tests.reliability.test_damaged_state import _damage

    out = tmp_path / "out"
    _synthetic(out, n_commits=4)  # checkpoint 3, manifest 4 after it
    key = _damage(out, damage)
    with pytest.raises(DamagedStateError) as info:
        DatapoolStore(LocalStorage(out)).load_state()
    assert str(out / key) in str(info.value) and "\n" not in str(info.value)


CRASH = """
import sys
from pathlib import Path
from datapool_pipeline.datapool import store as store_module
store_module.CHECKPOINT_EVERY = 3
from datapool_pipeline_tests.reliability.test_checkpoints import _synthetic_more
_synthetic_more(Path(sys.argv[1]), 1)
"""


@pytest.mark.slow  # SIGKILL (a second or two)
def test_a_crash_while_writing_a_checkpoint_leaves_the_state_readable(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _synthetic(out, n_commits=5)  # checkpoint 3; commit 6 writes checkpoint 6
    whole_before = _whole_chain(out)
    env = {**os.environ, "DATAPOOL_FAULT_INJECT": "mid_checkpoint"}
    done = subprocess.run([sys.executable, "-c", CRASH, str(out)], env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == -signal.SIGKILL
    state = DatapoolStore(LocalStorage(out)).load_state()
    assert state.checkpoint_seq == 3 and state.head_seq == 6  # the commit landed, its checkpoint did not
    assert state.commits[:5] == whole_before[0]
    found = check_datapool(DatapoolStore(LocalStorage(out)), dataset_type="VIDEOS", min_age_s=0)
    assert not found.damage and any("compacted part" in f.what for f in found.findings)
    _synthetic_more(out, 1)  # the next commit writes the checkpoint the crash skipped, and cleans up
    state = DatapoolStore(LocalStorage(out)).load_state()
    assert state.checkpoint_seq == 7
    repaired = check_datapool(DatapoolStore(LocalStorage(out)), dataset_type="VIDEOS", repair=True, min_age_s=0)
    assert not check_datapool(DatapoolStore(LocalStorage(out)), dataset_type="VIDEOS").findings, [
        f.line() for f in repaired.findings]
