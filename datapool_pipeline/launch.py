"""Preparing datapool runs: discover new files, register their shards, and work out the contiguous
partition range each run covers. Shared by the CLI (`prepare_run`) and the sensors (`scan_new_files`)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import polars as pl

from datapool_pipeline.assets import names
from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.assets.runs import DATASET_TAG, partition_range_tags
from datapool_pipeline.config import RunConfig
from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import RunAborted
from datapool_pipeline.media.kinds import media_kind
from datapool_pipeline.storage import Storage
from datapool_pipeline.storage.local import LocalStorage
from datapool_pipeline.storage.verify import verify_access
from datapool_pipeline.workflow.discovery import (
    assign_shards,
    check_input_exists,
    check_use_datapool,
    list_inventory,
    no_new_files_message,
    unprocessed,
)
from datapool_pipeline.workflow.progress import Log, no_log

_KEYS = ["raw_key", "raw_version"]


@dataclass
class PreparedRun:
    shards: list[str]
    files: int
    range_start: str
    range_end: str

    @property
    def tags(self) -> dict[str, str]:
        return partition_range_tags(self.range_start, self.range_end)


def partitions_name(spec: DatasetSpec) -> str:
    return names.partitions_name(spec)


def prepare_run(
    spec: DatasetSpec, instance: dg.DagsterInstance, run_config: RunConfig, log: Log = no_log
) -> PreparedRun:
    """Register the shards of every file the run needs (adding missing dynamic partitions now) and
    return the range covering them. Raises RunAborted (nothing written) when there is nothing to do."""
    store = DatapoolStore(storage_for(spec, "output"))
    input_storage = storage_for(spec, "input")
    if not spec.bypass_verify:
        verify_access(spec.name, input_storage, store.storage)
    store.check_owner(spec.name, spec.type, claim=True)
    check_use_datapool(spec, store, run_config.use_datapool)
    inventory = list_inventory(spec, input_storage, log)
    state = store.load_state()
    store.discard_committed_staging(state.commits)
    todo = inventory.files if run_config.process_all else unprocessed(inventory.files, state.processed)
    if todo.height == 0:
        raise RunAborted(
            no_new_files_message(spec, input_storage, inventory, unprocessed(inventory.other_type, state.processed))
        )
    needed, new_rows = assign_shards(spec, store, todo)
    if new_rows.height:
        log(f"registered {new_rows['shard_id'].n_unique()} new shard(s) for {new_rows.height} file(s)")
    name = partitions_name(spec)
    existing = instance.get_dynamic_partitions(name)
    missing = missing_partitions(needed, existing)
    if missing:
        instance.add_dynamic_partitions(name, missing)
        existing = instance.get_dynamic_partitions(name)
    position = {key: i for i, key in enumerate(existing)}
    ordered = sorted(needed, key=position.__getitem__)
    return PreparedRun(shards=ordered, files=todo.height, range_start=ordered[0], range_end=ordered[-1])


def missing_partitions(shards: list[str], existing: list[str]) -> list[str]:
    known = set(existing)
    return [s for s in dict.fromkeys(shards) if s not in known]


def run_tags(spec: DatasetSpec, prepared: PreparedRun) -> dict[str, str]:
    return {**prepared.tags, DATASET_TAG: spec.name}


# ---- sensors -----------------------------------------------------------------------------------


@dataclass
class ScanCursor:
    """Where the bounded listing stopped: the next tick lists the keys after `after`."""

    after: str = ""
    passes: int = 0
    """Complete passes over the input so far."""

    def serialize(self) -> str:
        return json.dumps({"after": self.after, "passes": self.passes})

    @classmethod
    def parse(cls, raw: str | None) -> ScanCursor:
        if not raw:
            return cls()
        try:
            body = json.loads(raw)
            return cls(after=str(body.get("after", "")), passes=int(body.get("passes", 0)))
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor only costs one extra pass over the input


@dataclass
class RunBatch:
    shards: list[str]
    files: int

    @property
    def run_key(self) -> str:
        """Shard ids hash their files' (key, version): the same files always give the same run key."""
        return hashlib.sha1("\n".join(self.shards).encode()).hexdigest()[:20]


@dataclass
class ScanResult:
    cursor: ScanCursor
    listed: int
    """Objects listed this tick."""
    new_files: int
    batches: list[RunBatch] = field(default_factory=list)
    new_partitions: list[str] = field(default_factory=list)
    """Shards to add as dynamic partitions, in the order that keeps every batch contiguous."""
    deferred: int = 0
    """New files left for the next tick (max_runs_per_tick reached)."""


def list_slice(storage: Storage, after: str, limit: int) -> tuple[pl.DataFrame, str | None]:
    """Up to `limit` objects with keys after `after` (listing is in key order); the key to resume from,
    or None when the listing reached the end."""
    keys: list[str] = []
    versions: list[str] = []
    sizes: list[int] = []
    listing = storage.list()
    last: str | None = None
    order = _walk_order if isinstance(storage, LocalStorage) else _key_order
    after_key = order(after) if after else None
    for info in listing:
        if after_key is not None and order(info.key) <= after_key:
            continue
        keys.append(info.key)
        versions.append(info.version)
        sizes.append(info.size)
        if len(keys) >= limit:
            last = info.key
            break
    close = getattr(listing, "close", None)
    if close is not None:
        close()  # stop a paginated listing early
    df = pl.DataFrame(
        {"raw_key": keys, "raw_version": versions, "raw_size": sizes, "media_type": [media_kind(k) for k in keys]},
        schema=tables.FILE_COLUMNS,
    )
    return df, last


def _key_order(key: str) -> Any:
    """Object stores list in lexicographic (UTF-8 byte = code point) order of the key."""
    return key


def _walk_order(key: str) -> Any:
    """A local folder lists a directory's files before its sub-directories, each sorted by name."""
    *dirs, name = key.split("/")
    return (*((1, d) for d in dirs), (0, name))


def scan_new_files(
    spec: DatasetSpec, store: DatapoolStore, input_storage: Storage, existing_partitions: list[str], cursor: ScanCursor
) -> ScanResult:
    """One sensor tick's work, bounded by the sensor settings: list the next slice of the input, find
    files no committed run processed and no run was requested for, register their shards and batch
    them into runs.

    A file is claimed once its shard is a dynamic partition, so it is never requested twice; a file
    whose shard was written to the registry but never became a partition (a tick that died halfway)
    is requested again under the same shard id and run key.
    """
    settings = spec.sensor
    store.check_owner(spec.name, spec.type, claim=True)
    check_input_exists(spec, input_storage)
    listed, resume = list_slice(input_storage, cursor.after, settings.max_objects_per_tick)
    files = listed.filter(pl.col("media_type") == spec.type)
    todo = unprocessed(files, store.load_state().processed)
    if todo.height:
        registry = store.read_registry()
        claimed = registry.filter(pl.col("shard_id").is_in(existing_partitions)).select(_KEYS)
        todo = todo.join(claimed, on=_KEYS, how="anti").sort("raw_key")
    budget = settings.files_per_run * settings.max_runs_per_tick
    deferred = max(todo.height - budget, 0)
    if deferred:
        todo = todo.head(budget)
        resume = todo["raw_key"][-1]  # the rest of this slice is listed again next tick
    next_cursor = ScanCursor(after=resume or "", passes=cursor.passes + (resume is None))
    if todo.height == 0:
        return ScanResult(cursor=next_cursor, listed=listed.height, new_files=0)
    shards, _ = assign_shards(spec, store, todo)
    members = store.shard_members(shards).join(todo.select(_KEYS), on=_KEYS, how="semi")
    per_shard = members.group_by("shard_id").agg(pl.len().alias("n"), pl.col("raw_key").min().alias("first"))
    batches: list[RunBatch] = []
    current: list[str] = []
    size = 0
    for shard, n in per_shard.sort("first").select("shard_id", "n").iter_rows():
        current.append(shard)
        size += n
        if size >= settings.files_per_run:
            batches.append(RunBatch(current, size))
            current, size = [], 0
    if current:
        batches.append(RunBatch(current, size))
    new_partitions = list(itertools.chain.from_iterable(b.shards for b in batches))
    return ScanResult(
        cursor=next_cursor,
        listed=listed.height,
        new_files=todo.height,
        batches=batches,
        new_partitions=missing_partitions(new_partitions, existing_partitions),
        deferred=deferred,
    )
