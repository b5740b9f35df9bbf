"""Every name derived from a dataset, defined once: partitions, jobs, ops, sensors, pools, resources, tags."""

from __future__ import annotations

from datapool_pipeline.datasets import DatasetSpec

DATASET_TAG = "datapool/dataset"
TRIGGER_TAG = "datapool/trigger"
FILES_TAG = "datapool/files"
LAUNCHED_BY_TAG = "datapool/launched_by"
"""On a datapool run requested for a UI launch: the id of the launch run that found its files."""
RANGE_START_TAG = "datapool/shard_range_start"
RANGE_END_TAG = "datapool/shard_range_end"
"""Set on a launch run once it registered the shards: the range its datapool run covers."""


def partitions_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}__shards"


def datapool_job_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}_datapool"


def launch_job_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}_launch"


def launch_op_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}__find_new_files"


def raw_files_op_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}__raw_files"


def new_files_sensor_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}_new_files"


def launch_sensor_name(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}_launched_runs"


def pool_name(spec: DatasetSpec, stage: str = "") -> str:
    """The concurrency pool of a dataset's commit path, or of one of its stages (embed: decode + embed)."""
    return f"datapool-{spec.name}" + (f"-{stage}" if stage else "")


def io_manager_key(spec: DatasetSpec) -> str:
    return f"{spec.asset_prefix}__io_manager"
