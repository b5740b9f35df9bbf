"""Recovering from CLI runs whose process died (SIGKILL, OOM, power loss).

Such a run stays STARTED in the instance and keeps the concurrency-pool slots it had claimed, which
would block every later run of the dataset. Runs launched by `datapool run` carry the launching
process's host and pid as tags; when that process is gone, the run is marked failed and its slots are
freed (the daemon's run monitoring does the same for runs it launched). The datapool itself needs no
repair: the next run finishes what the dead one staged (see workflow/commit.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

from datapool_pipeline.assets.runs import DATASET_TAG

HOST_TAG = "datapool/host"
PID_TAG = "datapool/pid"
PID_START_TAG = "datapool/pid_start"
_IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def launcher_tags() -> dict[str, str]:
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    started = _process_start(os.getpid())
    if started is not None:
        tags[PID_START_TAG] = started
    return tags


def _process_start(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux); None where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The same pid with another start time is a recycled pid: the launcher is gone.
    return started is None or _process_start(pid) in (None, started)


def fail_dead_runs(instance: dg.DagsterInstance, dataset: str) -> list[str]:
    """Mark this host's in-progress runs of `dataset` whose launcher died as failed; free their slots."""
    failed = []
    runs = instance.get_runs(filters=dg.RunsFilter(tags={DATASET_TAG: dataset}, statuses=_IN_PROGRESS))
    for run in runs:
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != socket.gethostname() or _alive(int(pid), run.tags.get(PID_START_TAG)):
            continue
        instance.report_run_failed(run, message=f"the process that ran it (pid {pid}) is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed
