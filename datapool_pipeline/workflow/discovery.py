"""Discovery: list the input datasource, tell new / changed / already-processed files apart, and
group new files into shards (batches of `videos_per_shard` videos up to `max_shard_megabytes`, or of
`images_per_shard` images). Shards registered before keep their members (older datapools: one video each)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from datapool_pipeline.datapool import DatapoolStore, tables
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import ConfigError, RunAborted
from datapool_pipeline.media.kinds import NOT_REGULAR_FILE, media_kind
from datapool_pipeline.storage import LocalStorage, Storage
from datapool_pipeline.storage.combined import SEPARATOR, CombinedInputs, members_of
from datapool_pipeline.workflow.progress import Log, Throttle, no_log

_KEYS = ["raw_key", "raw_version"]


@dataclass
class Inventory:
    files: pl.DataFrame
    """Files of the dataset's media type (FILE_COLUMNS)."""
    other_type: pl.DataFrame
    """Files of another media type or not media at all: skipped with a warning."""


def check_input_exists(spec: DatasetSpec, storage: Storage) -> None:
    """A mistyped local input folder is an error that says so, not "nothing new" (object stores: the
    run-start access check reports a missing bucket)."""
    for member in members_of(storage):
        if isinstance(member, LocalStorage) and not member.root.is_dir():
            raise ConfigError(
                f"datasets.{spec.name}.input: the folder {member.root} does not exist: fix the path in "
                "datasets.yaml or create the folder"
            )


def list_inventory(spec: DatasetSpec, storage: Storage, log: Log = no_log) -> Inventory:
    check_input_exists(spec, storage)
    keys: list[str] = []
    versions: list[str] = []
    sizes: list[int] = []
    kinds: list[str] = []
    throttle = Throttle(log)
    for n, info in enumerate(storage.list(), start=1):
        keys.append(info.key)
        versions.append(info.version)
        sizes.append(info.size)
        kinds.append(media_kind(info.key))
        throttle(f"listing {storage.display()}: {n} objects so far")
    for key, version, _ in not_regular_files(storage):  # FIFOs, sockets, devices: reported, never opened
        keys.append(key)
        versions.append(version)
        sizes.append(0)
        kinds.append(NOT_REGULAR_FILE)
    df = pl.DataFrame(
        {"raw_key": keys, "raw_version": versions, "raw_size": sizes, "media_type": kinds},
        schema=tables.FILE_COLUMNS,
    )
    files = df.filter(pl.col("media_type") == spec.type)
    other = df.filter(pl.col("media_type") != spec.type)
    log(f"listed {df.height} objects in {storage.display()}: {files.height} {spec.type.lower()}, {other.height} other")
    return Inventory(files=files, other_type=other)


def not_regular_files(storage: Storage) -> list[tuple[str, str, str]]:
    """(key, version, kind) of the entries of local input folders that the last listing passed over because
    they are not regular files (named pipes, sockets, devices); keys qualified like the listing's."""
    members = storage.members if isinstance(storage, CombinedInputs) else [(None, storage)]
    return [(f"{name}{SEPARATOR}{key}" if name else key, version, kind)
            for name, member in members for key, version, kind in getattr(member, "not_regular", [])]


def unprocessed(files: pl.DataFrame, processed: pl.DataFrame) -> pl.DataFrame:
    """Files whose exact (key, version) no committed run has processed."""
    return files.join(processed.select(_KEYS), on=_KEYS, how="anti")


def shard_id(media_type: str, members: list[tuple[str, str]]) -> str:
    digest = hashlib.sha1("\n".join(f"{k}\0{v}" for k, v in members).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", members[0][0]).strip("-")[-48:].strip("-") or "x"
    return f"{'v' if media_type == 'VIDEOS' else 'i'}-{slug}-{digest}"


def shard_limits(spec: DatasetSpec) -> tuple[int, int | None]:
    """(files per shard, bytes per shard or None) of the dataset's new shards."""
    if spec.type == "VIDEOS":
        return spec.videos_per_shard, spec.max_shard_megabytes * 2**20
    return spec.images_per_shard, None


def shard_starts(sizes: Sequence[int], per_shard: int, max_bytes: int | None = None) -> list[int]:
    """Where each shard starts among files in key order: a shard closes at `per_shard` files or before the
    file that would take it over `max_bytes` (a file larger than that alone is a shard of its own); the
    last shard takes what is left. The same files (and sizes) always give the same shards."""
    starts: list[int] = []
    count = total = 0
    for i, size in enumerate(sizes):
        if not starts or count >= per_shard or (max_bytes is not None and count and total + size > max_bytes):
            starts.append(i)
            count = total = 0
        count += 1
        total += size
    return starts


def assign_shards(
    spec: DatasetSpec, store: DatapoolStore, todo: pl.DataFrame, registry: pl.DataFrame | None = None
) -> tuple[list[str], pl.DataFrame]:
    """Shard ids covering `todo`: existing shards where the files were registered before, new ones
    for the rest (persisted in the registry). Returns (needed shard ids, newly registered rows).
    `registry`: the registry as the caller just read it (else it is read here)."""
    if registry is None:
        registry = store.read_registry()
    joined = todo.join(registry.select(["shard_id", *_KEYS]), on=_KEYS, how="left")
    known = joined.filter(pl.col("shard_id").is_not_null())
    missing = joined.filter(pl.col("shard_id").is_null()).drop("shard_id").sort("raw_key")
    new_rows: list[pl.DataFrame] = []
    if missing.height:
        starts = shard_starts(missing["raw_size"].fill_null(0).to_list(), *shard_limits(spec))
        groups = [missing.slice(a, b - a) for a, b in zip(starts, [*starts[1:], missing.height], strict=True)]
        for group in groups:
            sid = shard_id(spec.type, list(zip(group["raw_key"], group["raw_version"], strict=True)))
            new_rows.append(group.with_columns(pl.lit(sid).alias("shard_id")))
    new = pl.concat(new_rows) if new_rows else tables.empty(tables.REGISTRY_SCHEMA)
    store.append_registry(new)
    needed = list(dict.fromkeys([*known["shard_id"].to_list(), *new["shard_id"].to_list()]))
    return needed, new.select(list(tables.REGISTRY_SCHEMA))


@dataclass
class RunPlan:
    candidates: pl.DataFrame
    """Files this run processes: REGISTRY_SCHEMA columns (shard_id + file identity)."""
    other_type: pl.DataFrame
    """Files of another media type, not yet reported by a committed run."""
    stale: int
    """Members of the run's shards that are gone or changed since they were registered."""
    inventory_files: int

    def as_record(self) -> dict[str, object]:
        """Tables and numbers, for a step output stored in the output datasource."""
        return {"candidates": self.candidates, "other_type": self.other_type, "stale": self.stale,
                "inventory_files": self.inventory_files}

    @classmethod
    def from_record(cls, record: dict[str, object]) -> RunPlan:
        return cls(record["candidates"], record["other_type"], int(record["stale"]),  # type: ignore[arg-type]
                   int(record["inventory_files"]))  # type: ignore[arg-type]


def check_use_datapool(spec: DatasetSpec, store: DatapoolStore, use_datapool: bool) -> None:
    if use_datapool:
        return
    state = store.load_state()
    if state.size > 0:
        raise RunAborted(
            f"dataset {spec.name} already holds {state.size} samples in {len(state.commits)} tag(s) but "
            "worker_config.use_datapool is false: set use_datapool: true to grow it, or use a new "
            "dataset (a new output) to select independently"
        )


def plan_run(
    spec: DatasetSpec,
    store: DatapoolStore,
    input_storage: Storage,
    shard_ids: list[str],
    *,
    process_all: bool,
    log: Log = no_log,
) -> RunPlan:
    """Which files of the run's shards to process: still present with the registered version, and
    (unless process_all) not processed by a committed run."""
    store.check_owner(spec.name, spec.type, claim=True)
    state = store.load_state()
    store.discard_committed_staging(state.commits)
    if removed := store.remove_stale_temp_files():
        log(f"removed {removed} temporary file(s) left in the output by interrupted writes")
    inventory = list_inventory(spec, input_storage, log)
    members = store.shard_members(shard_ids)
    present = members.join(inventory.files.select(_KEYS), on=_KEYS, how="semi")
    stale = members.height - present.height
    candidates = present if process_all else unprocessed(present, state.processed)
    other = unprocessed(inventory.other_type, state.processed)
    if candidates.height == 0:
        raise RunAborted(no_new_files_message(spec, input_storage, inventory, other))
    unsafe = other.filter(pl.col("media_type") == "UNSAFE_KEY")
    not_regular = other.filter(pl.col("media_type") == NOT_REGULAR_FILE)
    wrong_type = other.filter(~pl.col("media_type").is_in(["UNSAFE_KEY", NOT_REGULAR_FILE]))
    for skipped, what in ((wrong_type, f"that are not {spec.type.lower()}"), (unsafe, "with unsafe keys"),
                          (not_regular, "that are not regular files (named pipes, sockets, devices; never opened)")):
        if skipped.height:
            names = ", ".join(repr(k) for k in skipped["raw_key"].head(5).to_list())
            log(f"skipping {skipped.height} file(s) {what}: {names}" + (" ..." if skipped.height > 5 else ""))
    return RunPlan(
        candidates=candidates.sort(["shard_id", "raw_key"]),
        other_type=other,
        stale=stale,
        inventory_files=inventory.files.height,
    )


def no_new_files_message(spec: DatasetSpec, storage: Storage, inventory: Inventory, other: pl.DataFrame) -> str:
    kind = spec.type.lower()
    if inventory.files.height == 0:
        found = inventory.other_type.height
        what = f"it holds no {kind} ({found} other file(s))" if found else "it is empty"
        return f"no raw files to process in {storage.display()}: {what}; add {kind} there"
    extra = f"; {other.height} file(s) of another type were skipped" if other.height else ""
    return (
        f"no new raw files in {storage.display()} since the last run ({inventory.files.height} "
        f"{spec.type.lower()} there, all processed{extra}): add files, or set "
        "worker_config.datasource.process_all: true to select again from everything"
    )
