"""Relevant filenames: restrict a run's candidates to listed raw files (selection_config.relevant_filenames
and/or selection_config.relevant_filenames_file, a key list in the input datasource)."""

from __future__ import annotations

import polars as pl

from datapool_pipeline.config import SelectionConfig
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


def restrict_to_relevant(
    plan: RunPlan, selection: SelectionConfig, input_storage: Storage, *, log: Log = no_log
) -> RunPlan:
    """The plan with only the relevant raw files (candidates and other-type files alike); the others stay
    unprocessed, so later runs still consider them. Aborts when no candidate is relevant."""
    keys = relevant_keys(selection, input_storage)
    if keys is None:
        return plan
    listed = sorted(keys)
    candidates = plan.candidates.filter(pl.col("raw_key").is_in(listed))
    other = plan.other_type.filter(pl.col("raw_key").is_in(listed))
    absent = len(keys) - candidates.height - other.height
    log(f"relevant filenames: {candidates.height} of the {plan.candidates.height} candidate raw file(s) are "
        f"listed ({len(keys)} key(s) listed, {max(absent, 0)} of them not among this run's files)")
    if candidates.height == 0:
        raise RunAborted(
            f"nothing to select: none of the {plan.candidates.height} candidate raw file(s) of this run is among "
            f"the {len(keys)} relevant filename(s)"
        )
    return RunPlan(candidates, other, plan.stale, plan.inventory_files)
