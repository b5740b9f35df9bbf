"""Preparing a datapool run: discover new files, register their shards as dynamic partitions, and
work out the contiguous partition range a single run covers. Shared by the CLI and the sensors."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from datapool_pipeline.assets.runs import DATASET_TAG, partition_range_tags
from datapool_pipeline.config import RunConfig
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import RunAborted
from datapool_pipeline.storage import open_storage
from datapool_pipeline.workflow.discovery import (
    assign_shards,
    check_use_datapool,
    list_inventory,
    no_new_files_message,
    unprocessed,
)
from datapool_pipeline.workflow.progress import Log, no_log


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
    return f"{spec.asset_prefix}__shards"


def prepare_run(
    spec: DatasetSpec, instance: dg.DagsterInstance, run_config: RunConfig, log: Log = no_log
) -> PreparedRun:
    """Raises RunAborted (nothing written) when there is nothing to do."""
    store = DatapoolStore(open_storage(spec.output))
    check_use_datapool(spec, store, run_config.use_datapool)
    input_storage = open_storage(spec.input)
    inventory = list_inventory(spec, input_storage, log)
    state = store.load_state()
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
    missing = [s for s in needed if s not in set(existing)]
    if missing:
        instance.add_dynamic_partitions(name, missing)
        existing = instance.get_dynamic_partitions(name)
    position = {key: i for i, key in enumerate(existing)}
    ordered = sorted(needed, key=position.__getitem__)
    return PreparedRun(shards=ordered, files=todo.height, range_start=ordered[0], range_end=ordered[-1])


def run_tags(spec: DatasetSpec, prepared: PreparedRun) -> dict[str, str]:
    return {**prepared.tags, DATASET_TAG: spec.name}
