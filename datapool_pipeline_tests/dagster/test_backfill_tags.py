"""Runs created by asset backfills carry `datapool/dataset` although the backfill itself has no tags, as
when launched from the UI (Materialize -> All partitions -> Launch backfill): the per-dataset run limit of
dagster.yaml then holds them, and `datapool resume` finds them. Real webserver + daemon (which creates the
backfill's runs), driven through GraphQL."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from datapool_pipeline.assets.names import DATASET_TAG
from datapool_pipeline_tests.dagster.servers import DagsterServers, dagster_servers, wait_for
from datapool_pipeline_tests.dagster.test_e2e import BACKFILL_MUTATION, _graphql
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: a real Dagster webserver and daemon run the backfill.
pytestmark = pytest.mark.slow

PREFIX = "videos_datapool"
RAW_FILES_OP = f"{PREFIX}__raw_files"


def _backfill(servers: DagsterServers, instance: dg.DagsterInstance, params: dict) -> list[dg.DagsterRun]:
    """Launch a backfill with no tags of its own; return its runs once it finished successfully."""
    response = _graphql(servers.port, BACKFILL_MUTATION, {"params": params})
    backfill_id = response["data"]["launchPartitionBackfill"]["backfillId"]
    backfill = wait_for(
        f"backfill {backfill_id}",
        lambda: (b := instance.get_backfill(backfill_id)) and b.status != BulkActionStatus.REQUESTED and b,
        timeout=420, logs=servers.log_text,
    )
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, _failures(instance, runs)
    assert DATASET_TAG not in backfill.tags
    return runs


def _failures(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> list[str]:
    return [str(e.dagster_event.step_failure_data.user_failure_data or e.dagster_event.step_failure_data.error)
            for r in runs for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]


@pytest.mark.timeout(900)
def test_backfill_runs_carry_the_dataset_tag(tmp_path: Path, dagster_home: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATAPOOL_EXECUTOR", "in_process")
    input_dir, output_dir = tmp_path / "input", tmp_path / "lightly"
    input_dir.mkdir()
    add_videos(input_dir, ["a.mp4", "b.mp4"], seconds=1)
    datasets = write_datasets_yaml(tmp_path / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir),
                                   str(output_dir))

    with dagster_servers(tmp_path, datasets, dagster_home) as servers, dg.DagsterInstance.get() as instance:
        # The whole graph with process_all: raw_files registers the shards, selection -> tag -> report commit.
        keys = [{"path": [PREFIX, n]} for n in ("raw_files", "frames", "embeddings", "selection", "tag", "report")]
        config = {"ops": {RAW_FILES_OP: {"config": {"worker_config": {"use_datapool": True, "datasource": {
            "process_all": True}}, "selection_config": {"n_samples": 2}}}}}
        whole = _backfill(servers, instance, {"assetSelection": keys, "allPartitions": True, "runConfigData": config})
        # (No shard partitions yet: Dagster runs the unpartitioned assets as one run.)
        assert whole
        assert {r.tags.get(DATASET_TAG) for r in whole} == {"videos-datapool"}, [r.tags for r in whole]
        assert len(instance.get_dynamic_partitions(f"{PREFIX}__shards")) == 1  # both videos in one shard

        # Re-embedding: frames + embeddings over all shard partitions.
        shard_keys = [{"path": [PREFIX, n]} for n in ("frames", "embeddings")]
        shards = _backfill(servers, instance, {"assetSelection": shard_keys, "allPartitions": True})
        assert shards and {r.tags.get(DATASET_TAG) for r in shards} == {"videos-datapool"}, [r.tags for r in shards]
        assert all("dagster/asset_partition_range_start" in r.tags for r in shards)

        # `datapool resume` and the run limit look runs up by the tag: every backfill run is found.
        found = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={DATASET_TAG: "videos-datapool"}))}
        assert {r.run_id for r in whole + shards} <= found
