"""A user who only has the Dagster UI (sensor off): launches with run config only find the new files,
a process_all backfill covers raw files that nothing registered before, and runs created by asset
backfills (which carry no tags of their own, as from the UI) get `datapool/dataset`, so the per-dataset
run limit of dagster.yaml holds them and `datapool resume` finds them. Real webserver + daemon, driven
through GraphQL only."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from dagster_graphql import DagsterGraphQLClient

from datapool_pipeline.assets.names import DATASET_TAG
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.dagster.servers import (
    BACKFILL_MUTATION,
    DagsterServers,
    dagster_servers,
    finished_run,
    graphql,
    wait_for,
)
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: a real Dagster webserver and daemon run the jobs.
pytestmark = pytest.mark.slow

LAUNCH_JOB = "videos_datapool_launch"
LAUNCH_OP = "videos_datapool__find_new_files"
RAW_FILES_OP = "videos_datapool__raw_files"


def _backfill(servers: DagsterServers, instance: dg.DagsterInstance, params: dict) -> list[dg.DagsterRun]:
    """Launch a backfill with no tags of its own (as the UI does); return its runs once it succeeded."""
    response = graphql(servers.port, BACKFILL_MUTATION, {"params": params})
    backfill_id = response["data"]["launchPartitionBackfill"]["backfillId"]
    backfill = wait_for(
        f"backfill {backfill_id}",
        lambda: (b := instance.get_backfill(backfill_id)) and b.status != BulkActionStatus.REQUESTED and b,
        timeout=420, logs=servers.log_text,
    )
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, servers.log_text()[-3000:]
    assert DATASET_TAG not in backfill.tags
    return runs


def _launch(client: DagsterGraphQLClient, instance: dg.DagsterInstance, config: dict) -> dg.DagsterRun:
    """Launch the launch job with run config only; return the datapool run it started, finished."""
    launch_id = client.submit_job_execution(LAUNCH_JOB, run_config={"ops": {LAUNCH_OP: {"config": config}}})
    launched = wait_for(f"launch run {launch_id}", lambda: finished_run(instance, launch_id))
    assert launched.status == dg.DagsterRunStatus.SUCCESS
    started = wait_for(
        "the datapool run the launch started",
        lambda: instance.get_runs(dg.RunsFilter(tags={"datapool/launched_by": launch_id})),
        timeout=120,
    )
    assert len(started) == 1
    return wait_for("the datapool run", lambda: finished_run(instance, started[0].run_id))


@pytest.mark.timeout(900)
@pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")
def test_ui_only_launch_and_process_all_backfill(tmp_path: Path, dagster_home: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATAPOOL_EXECUTOR", "in_process")
    input_dir, output_dir = tmp_path / "input", tmp_path / "lightly"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4", "b.mp4"], seconds=1)
    datasets = write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir),
                                   str(output_dir))  # no sensor block: the new-files sensor is off
    store = DatapoolStore(LocalStorage(output_dir))
    grow = {"worker_config": {"use_datapool": True}, "selection_config": {"n_samples": 4}}

    with dagster_servers(tmp_path, datasets, dagster_home) as servers, dg.DagsterInstance.get() as instance:
        client = DagsterGraphQLClient("127.0.0.1", port_number=servers.port)
        first = _launch(client, instance, grow)
        assert first.status == dg.DagsterRunStatus.SUCCESS, servers.log_text()[-3000:]

        add_videos(input_dir, ["c.mp4"], first_source=2, seconds=1)
        second = _launch(client, instance, {**grow, "selection_config": {"n_samples": 3}})
        assert second.status == dg.DagsterRunStatus.SUCCESS, servers.log_text()[-3000:]
        state = store.load_state()
        assert [c.run_id for c in state.commits] == [first.run_id, second.run_id]
        assert {k.split("/")[1] for k in state.tag_samples(state.tags[0])["sample_id"]} == {"a.mp4", "b.mp4"}
        assert {k.split("/")[1] for k in state.tag_samples(state.tags[1])["sample_id"]} == {"c.mp4"}

        # Nothing new: the launch run fails with the one-line reason, and no datapool run starts.
        launch_id = client.submit_job_execution(LAUNCH_JOB, run_config={"ops": {LAUNCH_OP: {"config": grow}}})
        failed = wait_for("the empty launch", lambda: finished_run(instance, launch_id))
        assert failed.status == dg.DagsterRunStatus.FAILURE
        failures = instance.all_logs(launch_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        reason = failures[0].dagster_event.step_failure_data.user_failure_data.description
        assert reason.startswith("no new raw files in") and "\n" not in reason

        # A file nothing registered, then a process_all backfill of the whole graph from the UI API.
        add_videos(input_dir, ["d.mp4"], first_source=3, seconds=1)
        keys = [{"path": ["videos_datapool", n]} for n in ("raw_files", "embeddings", "selection", "tag", "report")]
        config = {"ops": {RAW_FILES_OP: {"config": {"worker_config": {"use_datapool": True, "datasource": {
            "process_all": True}}, "selection_config": {"n_samples": 2}}}}}
        # No tags of its own, as the UI sends it: the run coordinator tags its runs with the dataset.
        whole = _backfill(servers, instance, {"assetSelection": keys, "allPartitions": True, "runConfigData": config})
        assert {r.tags.get(DATASET_TAG) for r in whole} == {"videos-datapool"}, [r.tags for r in whole]
        state = store.load_state()
        assert len(state.commits) == 3
        last = state.commits[-1]
        processed = state.processed.filter(state.processed["raw_key"] == "d.mp4")
        assert last.n_processed == 4 and processed.height == 1  # d.mp4 was decoded, embedded, considered
        pool = state.samples["sample_id"]
        assert pool.n_unique() == pool.len() == 9
        # d.mp4's shard is a partition now, and the UI shows its embeddings as materialized.
        shards = instance.get_dynamic_partitions("videos_datapool__shards")
        assert len(shards) == 3  # {a, b}, {c}, {d}: each launch groups its new videos (videos_per_shard)
        d_shard = next(s for s in shards if "d-mp4" in s)
        assert d_shard in instance.get_materialized_partitions(dg.AssetKey(["videos_datapool", "embeddings"]))

        # Re-embedding from the UI: embeddings over all shard partitions, runs tagged likewise,
        # so the per-dataset run limit holds them and `datapool resume` finds them.
        shard_keys = [{"path": ["videos_datapool", "embeddings"]}]
        again = _backfill(servers, instance, {"assetSelection": shard_keys, "allPartitions": True})
        assert again and {r.tags.get(DATASET_TAG) for r in again} == {"videos-datapool"}, [r.tags for r in again]
        assert all("dagster/asset_partition_range_start" in r.tags for r in again)
        found = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={DATASET_TAG: "videos-datapool"}))}
        assert {r.run_id for r in whole + again} <= found
    assert "Traceback" not in (servers.logs / "webserver.log").read_text()
