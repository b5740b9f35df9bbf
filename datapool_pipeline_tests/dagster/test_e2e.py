"""End to end with real processes: dagster-webserver + dagster-daemon on 127.0.0.1, a run launched
through the GraphQL client, a run the sensor starts by itself, and a process_all backfill."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from dagster_graphql import DagsterGraphQLClient

from datapool_pipeline.assets.run_config import op_run_config
from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import load_datasets
from datapool_pipeline.launch import prepare_run, run_tags
from datapool_pipeline.storage import open_storage
from datapool_pipeline_tests.dagster.servers import BACKFILL_MUTATION, dagster_servers, finished_run, graphql, wait_for
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: a real Dagster webserver and daemon run the jobs.
pytestmark = pytest.mark.slow

JOB = "videos_datapool_datapool"
RAW_FILES_OP = "videos_datapool__raw_files"
@pytest.mark.timeout(900)
@pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")  # inside dagster_graphql's client
def test_graphql_run_sensor_run_and_process_all_backfill(
    tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPOOL_EXECUTOR", "in_process")  # backfill steps in one process: faster on 2 cores
    input_dir, output_dir = tmp_path / "input", tmp_path / "lightly"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4", "b.mp4"], seconds=1)
    sensor_block = (
        "    sensor:\n      enabled: true\n      minimum_interval_seconds: 1\n      selection_config: {n_samples: 3}\n"
    )
    datasets = write_datasets_yaml(
        tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir), str(output_dir), extra=sensor_block
    )
    spec = load_datasets(datasets)["videos-datapool"]
    store = DatapoolStore(open_storage(str(output_dir)))
    first_config = {"worker_config": {"use_datapool": True}, "selection_config": {"n_samples": 4}}
    with dg.DagsterInstance.get() as instance:
        # What `datapool run` does before launching: register the shards of the 2 videos (the sensor
        # then sees them claimed and requests nothing for them).
        prepared = prepare_run(spec, instance, parse_run_config(first_config))

    with dagster_servers(tmp_path, datasets, dagster_home) as servers, dg.DagsterInstance.get() as instance:
        client = DagsterGraphQLClient("127.0.0.1", port_number=servers.port)
        first = client.submit_job_execution(
            JOB, run_config=op_run_config(RAW_FILES_OP, first_config), tags=run_tags(spec, prepared)
        )
        # A new video while the first run is queued or running: the sensor's run must wait for it.
        # Uploaded as object stores do it: the complete file appears at once (rename), never half-written.
        add_videos(tmp_path, ["c.mp4"], first_source=2, seconds=1)
        (tmp_path / "c.mp4").rename(input_dir / "c.mp4")
        sensor_runs = wait_for(
            "a run started by the sensor",
            lambda: instance.get_runs(dg.RunsFilter(tags={"datapool/trigger": "sensor"})),
            timeout=180,
        )
        assert len(sensor_runs) == 1
        second = sensor_runs[0].run_id
        for run_id in (first, second):
            run = wait_for(f"run {run_id}", lambda r=run_id: finished_run(instance, r))
            assert run.status == dg.DagsterRunStatus.SUCCESS, servers.log_text()[-3000:]

        commits = store.load_commits()
        assert [(c.run_id, c.n_samples) for c in commits] == [(first, 4), (second, 3)]
        tag_events = instance.fetch_materializations(dg.AssetKey(["videos_datapool", "tag"]), limit=10).records
        assert {e.asset_materialization.metadata["tag"].value for e in tag_events} == {c.tag for c in commits}
        embedded = instance.fetch_materializations(dg.AssetKey(["videos_datapool", "embeddings"]), limit=10).records
        runtimes = {e.asset_materialization.metadata["embedding_runtime"].value for e in embedded}
        assert runtimes and all(str(r).split()[0] in ("int8", "fp32", "bf16", "onnx", "onnx-int8", "openvino")
                                for r in runtimes)  # which runtime ran, and why (auto's measurements)
        assert all(c.config["worker_config"]["datasource"]["process_all"] is False for c in commits)
        # The asset checks guarding the datapool ran after each commit and passed.
        for run_id in (first, second):
            checks = {
                e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed
                for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            }
            assert checks == {"no_sample_twice": True, "tags_not_empty": True, "embeddings_unit_norm": True}
        # The sensor's run ingested only the new video.
        processed = {c.run_id: c for c in commits}
        assert processed[second].n_processed == 1

        # process_all through a backfill of the whole asset graph over every shard (as from the UI).
        keys = [{"path": ["videos_datapool", n]} for n in ("raw_files", "embeddings", "selection", "tag", "report")]
        backfill_config = op_run_config(
            RAW_FILES_OP,
            {"worker_config": {"use_datapool": True, "datasource": {"process_all": True}},
             "selection_config": {"n_samples": 2}},
        )
        params = {"assetSelection": keys, "allPartitions": True, "runConfigData": backfill_config,
                  "tags": [{"key": "datapool/dataset", "value": "videos-datapool"}]}
        response = graphql(servers.port, BACKFILL_MUTATION, {"params": params})
        backfill_id = response["data"]["launchPartitionBackfill"]["backfillId"]
        backfill = wait_for(
            "the backfill",
            lambda: (b := instance.get_backfill(backfill_id)) and b.status != BulkActionStatus.REQUESTED and b,
            timeout=420,
        )
        assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, servers.log_text()[-3000:]
        backfill_runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        # 2 shards ({a, b} and the sensor's {c}), decoded and embedded in ONE run (single-run backfill policy).
        partitioned = [r for r in backfill_runs if "dagster/asset_partition_range_start" in r.tags]
        assert len(partitioned) == 1 and len(backfill_runs) == 3
        commits = store.load_commits()
        assert len(commits) == 3 and commits[-1].n_samples == 2
        assert commits[-1].config["worker_config"]["datasource"]["process_all"] is True
        pool = DatapoolStore(open_storage(str(output_dir))).load_state().samples
        assert pool["sample_id"].n_unique() == pool.height == 9

        # Runs of one dataset never overlapped: check the instance's start/end times.
        records = instance.get_run_records(dg.RunsFilter(tags={"datapool/dataset": "videos-datapool"}))
        spans = sorted((r.start_time, r.end_time) for r in records)
        assert len(spans) == 5 and all(s and e for s, e in spans)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))
    assert "Traceback" not in (servers.logs / "webserver.log").read_text()
