"""Per-stage timings of a datapool run, read from the Dagster event log, for the run report."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import dagster as dg


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def step_timings(instance: dg.DagsterInstance, run_id: str, prefix: str) -> dict[str, Any]:
    """{"stages": [{stage, started_at, seconds}], "run_started_at", "total_seconds"} of the finished steps.

    Stage names are the asset names (`<prefix>__embeddings` -> `embeddings`). Steps still running (the report
    itself) are left out; `total_seconds` spans the run's start to the last finished step.
    """
    types = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    started: dict[str, float] = {}
    stages: list[dict[str, Any]] = []
    run_start: float | None = None
    last_end: float | None = None
    for entry in instance.all_logs(run_id, of_type=types):
        kind = entry.dagster_event.event_type if entry.dagster_event else None
        if kind == dg.DagsterEventType.RUN_START:
            run_start = entry.timestamp
        elif kind == dg.DagsterEventType.STEP_START and entry.step_key:
            started[entry.step_key] = entry.timestamp
        elif kind == dg.DagsterEventType.STEP_SUCCESS and entry.step_key in started:
            begin = started[entry.step_key]
            stages.append({
                "stage": entry.step_key.removeprefix(f"{prefix}__"),
                "started_at": _iso(begin),
                "seconds": round(entry.timestamp - begin, 3),
            })  # fmt: skip
            last_end = entry.timestamp
    first = run_start if run_start is not None else min(started.values(), default=None)
    return {
        "run_started_at": _iso(first) if first is not None else None,
        "stages": stages,
        "total_seconds": round(last_end - first, 3) if first is not None and last_end is not None else None,
    }
