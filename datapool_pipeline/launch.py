"""Preparing datapool runs: discover new files, register their shards, and work out the contiguous
partition range each run covers. Shared by the CLI (`prepare_run`) and the sensors (`scan_new_files`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from datapool_pipeline.assets import names
from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.assets.runs import DATASET_TAG, partition_range_tags
from datapool_pipeline.config import RunConfig
from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datasets import DEFAULT_FULL_LISTING_EVERY_TICKS, DatasetSpec
from datapool_pipeline.errors import RunAborted
from datapool_pipeline.media.kinds import media_kind
from datapool_pipeline.storage import Storage
from datapool_pipeline.storage.verify import verify_access
from datapool_pipeline.workflow.discovery import (
    assign_shards,
    check_input_exists,
    check_use_datapool,
    list_inventory,
    no_new_files_message,
    shard_limits,
    shard_starts,
    unprocessed,
)
from datapool_pipeline.workflow.progress import Log, no_log
from datapool_pipeline.workflow.relevant import keep_listed, keys_fingerprint, relevant_keys, unlisted_shard_mates
from datapool_pipeline.workflow.user_metadata import load_user_table

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
    load_user_table(spec, run_config.selection_config, input_storage)  # the metadata table: checked before any work
    relevant = relevant_keys(run_config.selection_config, input_storage)  # so is the relevant filenames file
    inventory = list_inventory(spec, input_storage, log)
    state = store.load_state()
    store.discard_committed_staging(state.commits)
    todo = inventory.files if run_config.process_all else unprocessed(inventory.files, state.processed)
    if todo.height == 0:
        raise RunAborted(
            no_new_files_message(spec, input_storage, inventory, unprocessed(inventory.other_type, state.processed))
        )
    if relevant is not None:
        # Before the files are grouped into shards: unlisted files are neither registered nor decoded, and
        # later runs find them as they would have without this run.
        listed_other = inventory.other_type.filter(pl.col("raw_key").is_in(sorted(relevant))).height
        todo = keep_listed(todo, relevant, log=log, also_found=listed_other,
                           unlisted_fate="the others are left unregistered and unprocessed for later runs")
    needed, new_rows = assign_shards(spec, store, todo)
    if new_rows.height:
        log(f"registered {new_rows['shard_id'].n_unique()} new shard(s) for {new_rows.height} file(s)")
    if relevant is not None:
        mates = unlisted_shard_mates(store, needed, todo, spec.embedding.fingerprint)
        if mates.height:
            names = ", ".join(repr(k) for k in mates["raw_key"].head(3).to_list())
            log(f"relevant filenames: {mates.height} other file(s) ({names}{' ...' if mates.height > 3 else ''}) "
                "were registered before in the same shard(s) as listed ones: the run decodes and embeds them with "
                "their shard (cached for later runs) but does not select them")
    name = partitions_name(spec)
    existing = instance.get_dynamic_partitions(name)
    missing = missing_partitions(needed, existing)
    if missing:
        # In slices: one call with ~10^6 keys is one SQL statement SQLite refuses (too many SQL variables).
        for i in range(0, len(missing), ADD_PARTITIONS_PER_CALL):
            instance.add_dynamic_partitions(name, missing[i:i + ADD_PARTITIONS_PER_CALL])
        existing = instance.get_dynamic_partitions(name)
    position = {key: i for i, key in enumerate(existing)}
    ordered = sorted(needed, key=position.__getitem__)
    return PreparedRun(shards=ordered, files=todo.height, range_start=ordered[0], range_end=ordered[-1])


ADD_PARTITIONS_PER_CALL = 10_000


def missing_partitions(shards: list[str], existing: list[str]) -> list[str]:
    known = set(existing)
    return [s for s in dict.fromkeys(shards) if s not in known]


def run_tags(spec: DatasetSpec, prepared: PreparedRun) -> dict[str, str]:
    return {**prepared.tags, DATASET_TAG: spec.name}


# ---- sensors -----------------------------------------------------------------------------------


FULL_LISTING_EVERY_TICKS = DEFAULT_FULL_LISTING_EVERY_TICKS
"""Incremental ticks between two full passes over the input (datasets.yaml `sensor.full_listing_every_ticks`).
An incremental tick lists only the keys after the greatest key seen so far; a full pass lists everything
again, `max_objects_per_tick` objects per tick, to find keys that were written before that key (buckets are
not append-only)."""


@dataclass
class ScanCursor:
    """Where the sensor's listing stands, carried from tick to tick.

    `after`: every key up to it has been listed; each tick lists the keys after it (S3 StartAfter, GCS
    startOffset, Azure startFrom, a pruned local walk), so a tick costs requests for the new keys, not
    for the bucket. `sweep`: position of a full pass in progress (None: none), which lists from the first
    key up to `after` in slices alongside the incremental listing and finds keys written out of order.
    Versions: 1 = {"after", "passes"} (every pass listed from the start); 2 adds "sweep", "ticks", "v".
    """

    after: str = ""
    passes: int = 0
    """Complete passes over the input so far."""
    sweep: str | None = None
    ticks: int = 0
    """Incremental ticks since the last full pass ended."""
    pending: list[tuple[str, str, int]] = field(default_factory=list)
    """New files held back until their shard fills (sensor.shard_wait_seconds): (key, version, size)."""
    pending_since: float | None = None
    """When the oldest of `pending` was first held (seconds since the epoch)."""
    relevant: str | None = None
    """Digest of the relevant filenames of the sensor's run config (None: none), which new files the ticks
    passed over unregistered; when it changes, the next tick starts a full pass to find them."""

    VERSION = 2

    def serialize(self) -> str:
        body: dict[str, object] = {"v": self.VERSION, "after": self.after, "passes": self.passes,
                                   "sweep": self.sweep, "ticks": self.ticks}
        if self.pending:
            body |= {"pending": [list(p) for p in self.pending], "pending_since": self.pending_since}
        if self.relevant is not None:
            body["relevant"] = self.relevant
        return json.dumps(body)

    @classmethod
    def parse(cls, raw: str | None) -> ScanCursor:
        if not raw:
            return cls()
        try:
            body = json.loads(raw)
            after, passes = str(body.get("after", "")), int(body.get("passes", 0))
            if "v" not in body:
                # Version 1 listed from the start and skipped up to `after` (in a local folder's walk
                # order, not key order): resume after it and check everything before it with a full pass.
                return cls(after=after, passes=passes, sweep="" if after else None)
            sweep = body.get("sweep")
            pending = [(str(k), str(v), int(s)) for k, v, s in body.get("pending") or []]
            since = body.get("pending_since")
            relevant = body.get("relevant")
            return cls(after=after, passes=passes, sweep=None if sweep is None else str(sweep),
                       ticks=int(body.get("ticks", 0)), pending=pending,
                       pending_since=float(since) if pending and since is not None else None,
                       relevant=None if relevant is None else str(relevant))
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
    swept: int = 0
    """Of the objects listed, those listed by a full pass (keys before the cursor)."""
    held: int = 0
    """New files held back in the cursor until their shard fills (sensor.shard_wait_seconds)."""
    unlisted: int = 0
    """New files left unregistered because the sensor's run config lists relevant filenames without them."""


@dataclass
class Slice:
    files: pl.DataFrame
    """Listed objects (FILE_COLUMNS), in key order."""
    last: str | None
    """The greatest key listed (None: nothing listed)."""
    complete: bool
    """The listing reached the end (or `until`) before the limit."""


def list_slice(storage: Storage, after: str, limit: int, until: str | None = None) -> Slice:
    """Up to `limit` objects with keys after `after` and, with `until`, not after `until`; the listing
    starts after `after` on the backend's side (Storage.list start_after)."""
    keys: list[str] = []
    versions: list[str] = []
    sizes: list[int] = []
    complete = True
    listing = storage.list(start_after=after) if limit > 0 else iter(())
    for info in listing:
        if until is not None and info.key > until:
            break
        if len(keys) >= limit:
            complete = False
            break
        keys.append(info.key)
        versions.append(info.version)
        sizes.append(info.size)
    if limit <= 0:
        complete = False
    close = getattr(listing, "close", None)
    if close is not None:
        close()  # stop a paginated listing early
    df = pl.DataFrame(
        {"raw_key": keys, "raw_version": versions, "raw_size": sizes, "media_type": [media_kind(k) for k in keys]},
        schema=tables.FILE_COLUMNS,
    )
    return Slice(df, keys[-1] if keys else None, complete)


PartitionLookup = Callable[[list[str]], set[str]]
"""Given shard ids, the ones that are dynamic partitions already."""


def partition_lookup(existing: Collection[str] | PartitionLookup) -> PartitionLookup:
    if callable(existing):
        return existing
    known = set(existing)
    return lambda keys: {k for k in keys if k in known}


def scan_new_files(
    spec: DatasetSpec,
    store: DatapoolStore,
    input_storage: Storage,
    existing_partitions: Collection[str] | PartitionLookup,
    cursor: ScanCursor,
    *,
    full_listing_every_ticks: int = FULL_LISTING_EVERY_TICKS,
    now: float | None = None,
) -> ScanResult:
    """One sensor tick's work, bounded by the sensor settings: list the keys after the cursor (and, when a
    full pass is due or under way, the next slice of it), find files no committed run processed and no
    run was requested for, register their shards and batch them into runs.

    `existing_partitions`: the dynamic partitions, or a function that tells which of some shard ids are
    partitions (so that a tick with few new files does not read every partition).

    A file is claimed once its shard is a dynamic partition, so it is never requested twice; a file
    whose shard was written to the registry but never became a partition (a tick that died halfway)
    is requested again under the same shard id and run key.

    With sensor.shard_wait_seconds, new files that would make a partly filled last shard are held back in
    the cursor (not registered) and grouped with the next ticks' new files, for up to that long.

    With relevant filenames in the sensor's run config, only listed files are registered (so the runs never
    decode the others); the others stay unclaimed: every full pass finds them again, and a change of the
    list (or its removal from the config) starts a full pass at the next tick.
    """
    settings = spec.sensor
    store.check_owner(spec.name, spec.type, claim=True)
    check_input_exists(spec, input_storage)
    relevant = relevant_keys(settings.selection_config, input_storage)
    unlisted = [0]
    known = partition_lookup(existing_partitions)
    limit = settings.max_objects_per_tick
    budget = settings.files_per_run * settings.max_runs_per_tick
    cache: dict[str, pl.DataFrame] = {}

    def registry() -> pl.DataFrame:
        if "registry" not in cache:
            cache["registry"] = store.read_registry()
        return cache["registry"]

    def new_files(listed: pl.DataFrame, count: bool = True) -> pl.DataFrame:
        files = listed.filter(pl.col("media_type") == spec.type)
        if files.height == 0:
            return files
        if "processed" not in cache:
            cache["processed"] = store.load_state().processed
        todo = unprocessed(files, cache["processed"])
        if todo.height:
            registered = todo.join(registry().select(["shard_id", *_KEYS]), on=_KEYS, how="inner")
            claimed_ids = known(registered["shard_id"].unique().to_list())
            claimed = registered.filter(pl.col("shard_id").is_in(list(claimed_ids))).select(_KEYS)
            todo = todo.join(claimed, on=_KEYS, how="anti")
        if relevant is not None and todo.height:
            listed_todo = todo.filter(pl.col("raw_key").is_in(sorted(relevant)))
            unlisted[0] += (todo.height - listed_todo.height) if count else 0
            todo = listed_todo
        return todo.sort("raw_key")

    passes, ticks, sweep = cursor.passes, cursor.ticks, cursor.sweep
    fingerprint = keys_fingerprint(relevant)
    if cursor.relevant is not None and cursor.relevant != fingerprint:
        sweep, ticks = "", 0  # other relevant filenames (or none): files passed over as unlisted may count now
    elif sweep is None and passes > 0 and ticks >= full_listing_every_ticks:
        sweep, ticks = "", 0  # a full pass is due

    # The keys after the cursor: what arrived since the last tick, at the cost of listing only those.
    tail = list_slice(input_storage, cursor.after, limit)
    todo = new_files(tail.files)
    after = tail.last or cursor.after
    deferred = max(todo.height - budget, 0)
    if deferred:
        todo = todo.head(budget)
        after = todo["raw_key"][-1]  # the rest of this slice is listed again next tick
    elif tail.complete and passes == 0 and sweep is None:
        passes = 1  # the first listing reached the end: it was a full pass
    listed, swept = tail.files.height, 0

    # A full pass in progress: the next slice of the keys up to the cursor (found out of order).
    if sweep is not None:
        room = budget - todo.height
        if room > 0 and limit - listed > 0:
            part = list_slice(input_storage, sweep, limit - listed, until=cursor.after)
            found = new_files(part.files)
            swept = part.files.height
            if found.height > room:
                deferred += found.height - room
                found = found.head(room)
                sweep = found["raw_key"][-1]
            elif part.complete:
                sweep, passes, ticks = None, passes + 1, 0
            else:
                sweep = part.last or sweep
            todo = pl.concat([todo, found]) if found.height else todo
    elif cursor.passes > 0:
        ticks += 1  # an incremental tick after a complete pass
    listed += swept
    todo, pending, since = _hold_partial_shard(spec, todo, cursor, new_files, registry, deferred > 0,
                                               time.time() if now is None else now)
    next_cursor = ScanCursor(after=after, passes=passes, sweep=sweep, ticks=ticks, pending=pending,
                             pending_since=since, relevant=fingerprint)
    if todo.height == 0:
        return ScanResult(cursor=next_cursor, listed=listed, new_files=0, swept=swept, held=len(pending),
                          unlisted=unlisted[0])
    shards, new_rows = assign_shards(spec, store, todo, registry=registry())
    members = pl.concat([registry().filter(pl.col("shard_id").is_in(shards)).select(list(tables.REGISTRY_SCHEMA)),
                         new_rows])
    members = members.join(todo.select(_KEYS), on=_KEYS, how="semi").unique(subset=["shard_id", *_KEYS])
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
    already = known(list(dict.fromkeys(new_partitions)))
    return ScanResult(
        cursor=next_cursor,
        listed=listed,
        new_files=todo.height,
        batches=batches,
        new_partitions=[s for s in dict.fromkeys(new_partitions) if s not in already],
        deferred=deferred,
        swept=swept,
        held=len(pending),
        unlisted=unlisted[0],
    )


def _hold_partial_shard(
    spec: DatasetSpec,
    todo: pl.DataFrame,
    cursor: ScanCursor,
    new_files: Callable[..., pl.DataFrame],
    registry: Callable[[], pl.DataFrame],
    deferred: bool,
    now: float,
) -> tuple[pl.DataFrame, list[tuple[str, str, int]], float | None]:
    """The tick's files to register now, and those held back in the cursor: with sensor.shard_wait_seconds,
    the unregistered files of a partly filled last shard wait (up to that long since the first of them was
    held) for more new files. Files held by the last tick come back here unless a run took them since."""
    if cursor.pending:
        held = pl.DataFrame(
            {"raw_key": [p[0] for p in cursor.pending], "raw_version": [p[1] for p in cursor.pending],
             "raw_size": [p[2] for p in cursor.pending], "media_type": [spec.type] * len(cursor.pending)},
            schema=tables.FILE_COLUMNS,
        )
        todo = pl.concat([todo, new_files(held, count=False).join(todo.select(_KEYS), on=_KEYS, how="anti")])
        todo = todo.sort("raw_key")
    wait = spec.sensor.shard_wait_seconds
    if wait <= 0 or deferred or todo.height == 0:
        return todo, [], None
    unregistered = todo.join(registry().select(_KEYS), on=_KEYS, how="anti").sort("raw_key")
    if unregistered.height == 0:
        return todo, [], None
    per_shard, max_bytes = shard_limits(spec)
    last = unregistered.slice(shard_starts(unregistered["raw_size"].fill_null(0).to_list(), per_shard, max_bytes)[-1])
    if last.height >= per_shard:
        return todo, [], None
    rows = list(zip(last["raw_key"], last["raw_version"], last["raw_size"].fill_null(0), strict=True))
    before = {(k, v) for k, v, _ in cursor.pending}
    since = cursor.pending_since if any((k, v) in before for k, v, _ in rows) else None
    since = now if since is None else since
    if now - since >= wait:
        return todo, [], None  # waited long enough: the partly filled shard goes ahead
    return todo.join(last.select(_KEYS), on=_KEYS, how="anti"), rows, since
