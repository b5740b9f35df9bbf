"""Which shards (dynamic partitions) a run covers, read from Dagster's run tags."""

from __future__ import annotations

import dagster as dg

from datapool_pipeline.assets.names import DATASET_TAG
from datapool_pipeline.errors import ConfigError

__all__ = ["DATASET_TAG", "BACKFILL_TAG", "partition_range_tags", "run_shard_keys"]
# Dagster's documented run tags (a run over a range of partitions, one partition, a backfill's runs).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_NAME_TAG = "dagster/partition"
BACKFILL_TAG = "dagster/backfill"


def partition_range_tags(start: str, end: str) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def run_shard_keys(context: dg.AssetExecutionContext, partitions_def_name: str) -> list[str]:
    tags = context.run.tags
    keys = context.instance.get_dynamic_partitions(partitions_def_name)
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start and end:
        if start not in keys or end not in keys:
            raise ConfigError(f"shard range {start}..{end} is not registered in {partitions_def_name}")
        i, j = keys.index(start), keys.index(end)
        return keys[min(i, j) : max(i, j) + 1]
    if BACKFILL_TAG in tags and keys:
        # An asset backfill runs the unpartitioned raw_files on its own: it covers every registered shard.
        return keys
    job = partitions_def_name.removesuffix("__shards")
    raise ConfigError(
        f"this run targets no shards: to process new raw files from the UI, launch the job {job}_launch (it "
        "finds them and starts this job over their shards); or use `datapool run`, the sensor, a backfill, or "
        "select shard partitions in the launchpad"
    )
