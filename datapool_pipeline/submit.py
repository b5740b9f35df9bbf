"""`datapool run` through the Dagster instance: submit the run to its run coordinator and launcher, then
follow it to the end.

With the embedded default (SQLite, the DefaultRunLauncher, no daemon) the CLI executes the job in its own
process instead (`execute_job`): that is what the default launcher would do on this machine, minus a
second process that loads the model again. With any other launcher (K8sRunLauncher, DockerRunLauncher,
a custom one) `datapool run` submits through the instance, so the work runs where the instance says.
`DATAPOOL_LAUNCH=here|instance` forces one or the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import dagster as dg

from datapool_pipeline.errors import ConfigError, RunAborted

LAUNCH_ENV = "DATAPOOL_LAUNCH"
LAUNCH_MODES = ("auto", "here", "instance")
_QUEUED_HINT_SECONDS = 30
_DAEMON = "QUEUED_RUN_COORDINATOR"


def launch_mode(instance: dg.DagsterInstance) -> str:
    """'here' (execute in this process) or 'instance' (submit to the instance's coordinator/launcher)."""
    choice = os.environ.get(LAUNCH_ENV, "auto").strip().lower() or "auto"
    if choice not in LAUNCH_MODES:
        raise ConfigError(f"{LAUNCH_ENV} must be one of {', '.join(LAUNCH_MODES)}, got {choice!r}")
    if choice != "auto":
        return choice
    return "here" if isinstance(instance.run_launcher, dg.DefaultRunLauncher) else "instance"


def _dagster_cli() -> list[str]:
    beside = Path(sys.executable).parent / "dagster"
    found = str(beside) if beside.exists() else shutil.which("dagster")
    if not found:
        raise ConfigError("the `dagster` command is not installed beside this Python: pip install dagster")
    return [found]


def submit_and_follow(
    instance: dg.DagsterInstance,
    job_name: str,
    run_config: dict[str, Any],
    tags: dict[str, str],
    log: Callable[[str], None],
) -> tuple[str, list[dg.DagsterEvent]]:
    """Submit the job with `dagster job launch` (the instance's coordinator and launcher), print its
    progress, and return (run id, its Dagster events) once it finished, successfully or not."""
    run_id = str(uuid.uuid4())
    command = [
        *_dagster_cli(), "job", "launch", "-m", "datapool_pipeline.definitions", "-a", "defs", "-j", job_name,
        "--config-json", json.dumps(run_config), "--tags", json.dumps(tags), "--run-id", run_id,
    ]
    log(f"submitting run {run_id} to the instance ({type(instance.run_launcher).__name__})")
    # Its output goes to a file, not a pipe: with the default launcher the run's own processes inherit
    # it, and a full pipe nobody reads would block them.
    with tempfile.TemporaryFile("w+") as output:
        launcher = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            return run_id, _follow(instance, run_id, launcher, output, log)
        finally:
            if launcher.poll() is None:
                try:
                    launcher.wait(timeout=90)  # with the default launcher it returns once the run ended
                except subprocess.TimeoutExpired:
                    launcher.kill()


def _follow(
    instance: dg.DagsterInstance, run_id: str, launcher: subprocess.Popen[str], output: IO[str],
    log: Callable[[str], None],
) -> list[dg.DagsterEvent]:
    cursor: str | None = None
    events: list[dg.DagsterEvent] = []
    status = None
    submitted = time.monotonic()
    hinted = False
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            if launcher.poll() is not None:
                output.seek(0)
                lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in output.read().splitlines()]
                errors = [ln for ln in lines if "error" in ln.lower() and " - INFO - " not in ln]
                reason = (errors or [ln for ln in lines if ln] or [f"exit code {launcher.returncode}"])[-1]
                raise RunAborted(f"the instance did not accept the run: {reason}")
            time.sleep(0.5)
            continue
        connection = instance.get_records_for_run(run_id, cursor=cursor, limit=1000)
        for record in connection.records:
            entry = record.event_log_entry
            if entry.dagster_event is not None:
                events.append(entry.dagster_event)
                if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                    log(f"step {entry.step_key} started")
            elif entry.user_message:
                log(entry.user_message)
        cursor = connection.cursor
        if run.status != status:
            status = run.status
            log(f"run {run_id}: {status.value.lower()}")
        if status == dg.DagsterRunStatus.QUEUED and not hinted and time.monotonic() - submitted > _QUEUED_HINT_SECONDS:
            if _DAEMON not in instance.get_daemon_heartbeats():
                log("the run is queued and no dagster-daemon is running to start it: start `dagster-daemon run` "
                    "(or `dagster dev`) with this DAGSTER_HOME, or set DATAPOOL_LAUNCH=here")
            hinted = True
        if run.is_finished and not connection.has_more:
            return events
        if not connection.has_more:
            time.sleep(1)
