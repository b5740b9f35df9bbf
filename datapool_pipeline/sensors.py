"""Per-dataset sensor: watches the input datasource and requests one datapool run per batch of new files."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from datapool_pipeline.assets import DatasetAssets
from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.assets.run_config import op_run_config
from datapool_pipeline.assets.runs import DATASET_TAG, partition_range_tags
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.launch import ScanCursor, scan_new_files

TRIGGER_TAG = "datapool/trigger"
FILES_TAG = "datapool/files"


PARTITION_LOOKUPS_ONE_BY_ONE = 100
"""Up to this many shard ids are looked up one by one (has_dynamic_partition); more: all partitions are
read at once. A tick with a few new files then reads a few rows, not every partition ever added."""


def partition_lookup(instance: dg.DagsterInstance, name: str) -> Callable[[list[str]], set[str]]:
    """Which of some shard ids are dynamic partitions of `name` already."""

    def known(keys: list[str]) -> set[str]:
        if len(keys) <= PARTITION_LOOKUPS_ONE_BY_ONE:
            return {k for k in keys if instance.has_dynamic_partition(name, k)}
        existing = set(instance.get_dynamic_partitions(name))
        return {k for k in keys if k in existing}

    return known


def sensor_name(built: DatasetAssets) -> str:
    return f"{built.spec.asset_prefix}_new_files"


def build_sensor(built: DatasetAssets) -> dg.SensorDefinition:
    spec = built.spec
    settings = spec.sensor
    partitions = built.partitions
    full_every = settings.full_listing_every_ticks

    @dg.sensor(
        name=sensor_name(built),
        job=built.job,
        minimum_interval_seconds=settings.minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Lists {spec.name}'s input after the greatest key it has seen "
        f"({settings.max_objects_per_tick} objects per tick at most; a full pass every "
        f"{full_every} ticks finds keys written out of order), registers new raw files as "
        f"shards and requests one run per {settings.files_per_run} new files. Settings: the sensor block "
        "of datasets.yaml.",
        tags={DATASET_TAG: spec.name},
    )
    def new_files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = ScanCursor.parse(context.cursor)
        store = DatapoolStore(storage_for(spec, "output"))
        scan = scan_new_files(
            spec, store, storage_for(spec, "input"), partition_lookup(context.instance, partitions.name or ""), cursor,
            full_listing_every_ticks=full_every,
        )
        where = f"listed {scan.listed - scan.swept} object(s) after {cursor.after or 'the start'!r}"
        if scan.swept or cursor.sweep is not None or scan.cursor.sweep is not None:
            where += f" and {scan.swept} of a full pass" + (
                " (pass complete)" if scan.cursor.sweep is None else f" (next from {scan.cursor.sweep!r})"
            )
        held = (f"; {scan.held} new file(s) wait for their shard to fill (at most "
                f"{settings.shard_wait_seconds} s)") if scan.held else ""
        if scan.unlisted:
            held += (f"; {scan.unlisted} new file(s) not among the relevant filenames of the sensor's run config "
                     "left unregistered")
        if not scan.batches:
            return dg.SensorResult(
                skip_reason=f"no new {spec.type.lower()}: {where}{held}", cursor=scan.cursor.serialize()
            )
        context.log.info(
            f"{where}: {scan.new_files} new file(s) in {len(scan.batches)} run(s)"
            + (f"; {scan.deferred} left for the next tick" if scan.deferred else "") + held
        )
        run_config = op_run_config(built.raw_files_op, spec.sensor.run_config)
        requests = [
            dg.RunRequest(
                run_key=batch.run_key,
                run_config=run_config,
                tags={
                    **partition_range_tags(batch.shards[0], batch.shards[-1]),
                    DATASET_TAG: spec.name,
                    TRIGGER_TAG: "sensor",
                    FILES_TAG: str(batch.files),
                },
            )
            for batch in scan.batches
        ]
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions.build_add_request(scan.new_partitions)]
            if scan.new_partitions
            else [],
            cursor=scan.cursor.serialize(),
        )

    return new_files_sensor
