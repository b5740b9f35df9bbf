"""Step outputs of a datapool run, kept in the dataset's output datasource under the run's id.

The steps of a run (raw_files -> selection -> tag -> report) hand each other small plans: JSON, plus
Parquet for tables. Storing them in the output datasource, not on a local disk, lets every step run in
its own process, container or pod (k8s_job_executor); keying them by run id, not by asset key, means a
re-execution of an older run (`datapool resume`, "re-execute from failure") reads that run's outputs,
never the newest run's. Layout: `datapool/runs/<run id>/<asset>.json` (+ `<asset>.<field>.parquet`).
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import polars as pl

from datapool_pipeline.datapool import tables
from datapool_pipeline.datapool.store import ROOT
from datapool_pipeline.storage import Storage

RUNS_PREFIX = f"{ROOT}/runs"


def step_output_prefix(run_id: str, asset_name: str) -> str:
    return f"{RUNS_PREFIX}/{run_id}/{asset_name}"


class DatapoolIOManager(dg.IOManager):
    """Stores mappings whose values are JSON-able or polars DataFrames."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def handle_output(self, context: dg.OutputContext, obj: dict[str, Any]) -> None:
        if obj is None:
            return
        base = step_output_prefix(context.run_id, context.asset_key.path[-1])
        plain: dict[str, Any] = {}
        frames: list[str] = []
        for name, value in obj.items():
            if isinstance(value, pl.DataFrame):
                self.storage.write_bytes(f"{base}.{name}.parquet", tables.to_parquet(value))
                frames.append(name)
            else:
                plain[name] = value
        # The JSON last: its presence marks the output complete.
        body = {"values": plain, "tables": frames}
        self.storage.write_bytes(f"{base}.json", json.dumps(body, sort_keys=True).encode())
        context.add_output_metadata({"stored_at": dg.MetadataValue.text(self.storage.display(f"{base}.json"))})

    def load_input(self, context: dg.InputContext) -> dict[str, Any]:
        asset_key = context.asset_key
        run_id = self._source_run(context)
        base = step_output_prefix(run_id or "?", asset_key.path[-1])
        if run_id is None or not self.storage.exists(f"{base}.json"):
            raise dg.Failure(
                description=f"the output of {asset_key.to_user_string()} (run {run_id or 'none yet'}) is missing "
                f"from {self.storage.display(base)}.json: run the whole job",
                allow_retries=False,
            )
        body = json.loads(self.storage.read_bytes(f"{base}.json"))
        values: dict[str, Any] = dict(body["values"])
        for name in body["tables"]:
            values[name] = tables.from_parquet(self.storage.read_bytes(f"{base}.{name}.parquet"))
        return values


    def _source_run(self, context: dg.InputContext) -> str | None:
        """The run whose output this input is: the producing step's run within a run or a re-execution
        (for a step skipped by "re-execute from failure", the parent run); for an upstream asset that
        another run materialized (runs of a backfill), that asset's latest materialization."""
        upstream = context.upstream_output
        try:
            run_id = upstream.run_id if upstream is not None else None
        except dg.DagsterInvariantViolationError:
            run_id = None
        if run_id is not None and self.storage.exists(f"{step_output_prefix(run_id, context.asset_key.path[-1])}.json"):
            return run_id
        event = context.instance.get_latest_materialization_event(context.asset_key)
        return event.run_id if event is not None else run_id


def datapool_io_manager(storage: Storage) -> dg.IOManagerDefinition:
    return dg.IOManagerDefinition.hardcoded_io_manager(DatapoolIOManager(storage))
