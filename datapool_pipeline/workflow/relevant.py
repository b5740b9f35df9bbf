"""Relevant filenames: restrict a run's candidates to listed raw files (selection_config.relevant_filenames
and/or selection_config.relevant_filenames_file, a key list in the input datasource).

The restriction applies where files become a run's work, before they are grouped into shards: `datapool
run`, a launch from the UI and a process_all backfill (launch.prepare_run) and the sensor
(launch.scan_new_files) register shards of listed files only, so an unlisted file is never decoded or
embedded by the run, and stays unregistered and unprocessed for later runs. `restrict_to_relevant` then
keeps the run's plan (raw_files) to the listed files of its shards."""

from __future__ import annotations

import hashlib

import polars as pl

from datapool_pipeline.config import SelectionConfig
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.errors import ConfigError, RunAborted
from datapool_pipeline.storage import Storage
from datapool_pipeline.workflow.discovery import RunPlan
from datapool_pipeline.workflow.progress import Log, no_log


def relevant_keys(selection: SelectionConfig, input_storage: Storage) -> set[str] | None:
    """The raw file keys a run may select from, or None when the config does not restrict them. The file
    holds one key a line; blank lines and lines starting with # are ignored."""
    if selection.relevant_filenames is None and selection.relevant_filenames_file is None:
        return None
    keys = set(selection.relevant_filenames or ())
    name = selection.relevant_filenames_file
    if name is not None:
        where = f"selection_config.relevant_filenames_file: {name}"
        if not input_storage.exists(name):
            raise ConfigError(f"{where} is not in the input datasource {input_storage.display()}")
        try:
            text = input_storage.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where} is not a UTF-8 text file (one raw file key a line)") from None
        listed = {line.strip() for line in text.splitlines()}
        listed = {line for line in listed if line and not line.startswith("#")}
        if not listed:
            raise ConfigError(f"{where} lists no raw file keys (one key a line)")
        keys |= listed
    return keys


def keys_fingerprint(keys: set[str] | None) -> str | None:
    """A short digest of a relevant key set (None: no restriction), so a sensor notices when it changes."""
    if keys is None:
        return None
    return hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def keep_listed(files: pl.DataFrame, keys: set[str], *, log: Log = no_log, also_found: int = 0,
                unlisted_fate: str = "") -> pl.DataFrame:
    """The rows of `files` (a run's candidate raw files) whose key is listed; aborts when none is.
    `also_found`: listed keys found elsewhere (files of another type); `unlisted_fate` ends the log line."""
    kept = files.filter(pl.col("raw_key").is_in(sorted(keys)))
    absent = max(len(keys) - kept.height - also_found, 0)
    fate = f"; {unlisted_fate}" if unlisted_fate and kept.height < files.height else ""
    log(f"relevant filenames: {kept.height} of the {files.height} candidate raw file(s) are listed ({len(keys)} "
        f"key(s) listed, {absent} of them not among this run's files){fate}")
    if kept.height == 0:
        raise RunAborted(
            f"nothing to select: none of the {files.height} candidate raw file(s) of this run is among the "
            f"{len(keys)} relevant filename(s)"
        )
    return kept


def restrict_to_relevant(
    plan: RunPlan, selection: SelectionConfig, input_storage: Storage, *, log: Log = no_log
) -> RunPlan:
    """The plan with only the relevant raw files (candidates and other-type files alike); the others stay
    unprocessed, so later runs still consider them. Aborts when no candidate is relevant."""
    keys = relevant_keys(selection, input_storage)
    if keys is None:
        return plan
    other = plan.other_type.filter(pl.col("raw_key").is_in(sorted(keys)))
    candidates = keep_listed(plan.candidates, keys, log=log, also_found=other.height)
    return RunPlan(candidates, other, plan.stale, plan.inventory_files)


def unlisted_shard_mates(
    store: DatapoolStore, shards: list[str], listed: pl.DataFrame, fingerprint: str
) -> pl.DataFrame:
    """Members of `shards` other than the `listed` files, in shards with no embeddings of the model yet: files
    registered before (by a sensor tick, or a run that did not get that far) in one shard with a listed
    file. The run decodes and embeds them with it (cached for later runs), but never selects them."""
    mates = store.shard_members(shards).join(listed.select(["raw_key", "raw_version"]),
                                             on=["raw_key", "raw_version"], how="anti")
    pending = [s for s in mates["shard_id"].unique().to_list()
               if not store.storage.exists(store.embeddings_key(s, fingerprint))]
    return mates.filter(pl.col("shard_id").is_in(pending))
