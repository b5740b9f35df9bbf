"""Real `dagster-webserver` and `dagster-daemon` processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from datapool_pipeline.running import create_instance_storage

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DagsterServers:
    port: int
    home: Path
    logs: Path

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group we started: SIGTERM, then SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def dagster_servers(workdir: Path, datasets: Path, home: Path) -> Iterator[DagsterServers]:
    """Webserver + daemon over the repository's workspace.yaml; both stopped on exit, also on failure."""
    port = free_port()
    logs = workdir / "server-logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATAPOOL_DATASETS": str(datasets)}
    workspace = str(REPO / "workspace.yaml")
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", workspace],
    }
    # Create the instance's tables first: a webserver, a daemon and a test process that all create a new
    # SQLite instance at once can stamp its schema twice (alembic: "more than one head").
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        create_instance_storage(home)
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
    procs: list[subprocess.Popen] = []
    try:
        for name, cmd in commands.items():
            with open(logs / f"{name}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
                )
        servers = DagsterServers(port=port, home=home, logs=logs)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("dagster-webserver did not start:\n" + servers.log_text()[-3000:]) from None
                time.sleep(0.5)
        yield servers
    finally:
        for proc in procs:
            _stop(proc)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 300, logs: Callable[[], str] = str) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds with the logs' tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()[-3000:]}")


DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """One GraphQL request to the test webserver, as the UI sends it."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def finished_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    """The run once it has ended (for wait_for), else None."""
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.status in DONE else None
