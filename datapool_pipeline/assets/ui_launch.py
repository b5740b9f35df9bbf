"""Launching a datapool run from the Dagster UI with nothing but the run config.

A datapool run covers a contiguous range of shard partitions, which must be registered before the run
starts. The `<dataset>_launch` job does what `datapool run` and the new-files sensor do before they
start a run: list the input, register the shards of the files to process (new ones, or all with
process_all) and record the range on its own run. The `<dataset>_launched_runs` sensor then starts the
datapool job over that range with the same run config, once per launch run (its run key).
"""


from datetime import datetime, timezone

import dagster as dg

from datapool_pipeline.assets import names
from datapool_pipeline.assets.factory import DatasetAssets, failures_as_reasons
from datapool_pipeline.assets.run_config import DatapoolRunConfig, op_run_config
from datapool_pipeline.assets.runs import partition_range_tags

_SENSOR_INTERVAL_SECONDS = 5
_PER_TICK = 50


def build_launch_job(built: DatasetAssets) -> dg.JobDefinition:
    spec = built.spec
    target = names.datapool_job_name(spec)

    @dg.op(
        name=names.launch_op_name(spec),
        description=f"Lists {spec.name}'s input, registers the shards of the raw files to process and "
        f"hands their range to the sensor {names.launch_sensor_name(spec)}, which starts {target}.",
        tags={names.DATASET_TAG: spec.name},
    )
    @failures_as_reasons
    def find_new_files(context: dg.OpExecutionContext, config: DatapoolRunConfig) -> None:
        from datapool_pipeline.embedding.model import validate_embedding_spec
        from datapool_pipeline.launch import prepare_run

        run_config = config.parsed()
        validate_embedding_spec(spec.embedding)
        prepared = prepare_run(spec, context.instance, run_config, log=context.log.info)
        context.instance.add_run_tags(
            context.run_id,
            {
                names.RANGE_START_TAG: prepared.range_start,
                names.RANGE_END_TAG: prepared.range_end,
                names.FILES_TAG: str(prepared.files),
            },
        )
        context.log.info(
            f"{prepared.files} raw file(s) to process in {len(prepared.shards)} shard(s); the sensor "
            f"{names.launch_sensor_name(spec)} starts {target} over them"
        )

    @dg.job(
        name=names.launch_job_name(spec),
        description=f"Launch this from the UI to grow {spec.name}: finds the new raw files (all of them with "
        f"process_all), registers their shards and starts {target} over them with the same run config. "
        f"Needs the dagster-daemon (it runs the sensor {names.launch_sensor_name(spec)}). The launchpad starts "
        "from the sensor's run config in datasets.yaml (by default: grow the datapool by 10% of the new samples).",
        tags={names.DATASET_TAG: spec.name},
        # The launchpad's starting point: growing the datapool, as the sensor does (use_datapool: false
        # would abort on any dataset that already has one).
        config={"ops": {names.launch_op_name(spec): {"config": spec.sensor.run_config}}},
        executor_def=dg.in_process_executor,  # one small step: no subprocess
    )
    def launch_job() -> None:
        find_new_files()

    return launch_job


def build_launch_sensor(built: DatasetAssets) -> dg.SensorDefinition:
    spec = built.spec
    launch_job = names.launch_job_name(spec)
    launch_op = names.launch_op_name(spec)

    @dg.sensor(
        name=names.launch_sensor_name(spec),
        job=built.job,
        minimum_interval_seconds=_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Starts {names.datapool_job_name(spec)} for each successful {launch_job} run, over the "
        "shards that run registered, with its run config. Keep it running: UI launches depend on it.",
        tags={names.DATASET_TAG: spec.name},
    )
    def launched_runs(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        since = float(context.cursor or 0)
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=launch_job,
                statuses=[dg.DagsterRunStatus.SUCCESS],
                # One second of overlap: run keys make a repeated request a no-op.
                updated_after=datetime.fromtimestamp(max(since - 1, 0), tz=timezone.utc),
            ),
            order_by="update_timestamp",
            ascending=True,
            limit=_PER_TICK,
        )
        requests: list[dg.RunRequest] = []
        newest = since
        for record in records:
            run = record.dagster_run
            newest = max(newest, record.update_timestamp.timestamp())
            start, end = run.tags.get(names.RANGE_START_TAG), run.tags.get(names.RANGE_END_TAG)
            if not (start and end):
                continue
            config = (run.run_config.get("ops", {}).get(launch_op) or {}).get("config", {})
            requests.append(
                dg.RunRequest(
                    run_key=f"launch-{run.run_id}",
                    run_config=op_run_config(built.raw_files_op, config),
                    tags={
                        **partition_range_tags(start, end),
                        names.DATASET_TAG: spec.name,
                        names.TRIGGER_TAG: "ui-launch",
                        names.LAUNCHED_BY_TAG: run.run_id,
                        names.FILES_TAG: run.tags.get(names.FILES_TAG, ""),
                    },
                )
            )
        if not requests:
            return dg.SensorResult(skip_reason=f"no new successful {launch_job} run", cursor=str(newest))
        return dg.SensorResult(run_requests=requests, cursor=str(newest))

    return launched_runs
