"""The run queue of a datapool instance: Dagster's QueuedRunCoordinator, plus the dataset tag on every run.

Dagster gives the runs of an asset backfill (and of an asset materialization launched from the UI) only the
tags of the backfill or launch itself, the partition-range tags and `dagster/backfill`: neither asset
definition tags nor the tags of a job reach them (Dagster 1.13: `execution/asset_backfill.py` submits
`{**run_request.tags, **backfill.tags, dagster/backfill}`, and the implicit asset job those runs belong to
has no tags). Without `datapool/dataset` the per-dataset run limit of `dagster.yaml`
(`tag_concurrency_limits`) does not hold such a run back, and `datapool resume` does not find it.

`DatapoolRunCoordinator` adds the tag when a run is submitted, before it enters the queue: the value is
the `datapool/dataset` definition tag of the assets (and asset checks) the run materializes, read from the
code location's asset graph. Runs that already carry the tag (sensor, CLI, launch job, datapool job) and
runs of assets of no dataset are left as they are. Configure it in dagster.yaml:

    run_coordinator:
      module: datapool_pipeline.assets.run_coordinator
      class: DatapoolRunCoordinator

It accepts the same config as QueuedRunCoordinator. The processes that submit runs (the daemon for
backfills and sensors, the webserver for UI launches) must be able to import `datapool_pipeline`.
"""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg

from datapool_pipeline.assets.names import DATASET_TAG

_log = logging.getLogger(__name__)


def datasets_of_run(run: dg.DagsterRun, asset_graph: Any) -> list[str]:
    """The `datapool/dataset` definition tags of the assets and asset checks a run selects, sorted."""
    keys = set(run.asset_selection or ())
    keys |= {check.asset_key for check in run.asset_check_selection or ()}
    found = set()
    for key in keys:
        if asset_graph.has(key):
            value = asset_graph.get(key).tags.get(DATASET_TAG)
            if value:
                found.add(value)
    return sorted(found)


class DatapoolRunCoordinator(dg.QueuedRunCoordinator):
    """QueuedRunCoordinator that tags each run with the dataset whose assets it materializes."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if DATASET_TAG not in run.tags and (run.asset_selection or run.asset_check_selection):
            try:
                datasets = datasets_of_run(run, context.workspace.asset_graph)
            except Exception:  # never refuse a run because its assets could not be looked up
                _log.warning("could not find the dataset of run %s", run.run_id, exc_info=True)
                datasets = []
            if datasets:
                # One value per run: a run over assets of two datasets (a rare hand-made selection)
                # gets both names, so it queues apart from either dataset's runs.
                self._instance.add_run_tags(run.run_id, {DATASET_TAG: ",".join(datasets)})
                tagged = self._instance.get_run_by_id(run.run_id)
                if tagged is not None:
                    context = context._replace(dagster_run=tagged)
        return super().submit_run(context)
