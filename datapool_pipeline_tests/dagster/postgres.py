"""A throwaway PostgreSQL server on 127.0.0.1 for tests: Debian's `postgresql` binaries, a fresh data
directory in a temporary folder, a free port, the unix socket inside that folder. Stopped and removed on
exit, also on failure.

Postgres refuses to run as root: under euid 0 (CI on a fresh machine) the server runs as the `postgres`
system user that the Debian package creates, and the temporary folder belongs to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from datapool_pipeline_tests.dagster.servers import free_port

SERVER_USER = "postgres"
"""The system user the server runs as when the tests run as root."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    db_name: str
    version: str
    """Major version of the server binaries, e.g. "15"."""

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables a dagster.yaml with `{env: DAGSTER_PG_...}` fields reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }

    def connect(self, db_name: str | None = None):  # noqa: ANN201 (psycopg2 connection)
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=db_name or self.db_name
        )


def find_postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that holds initdb and pg_ctl (Debian's layout)."""
    candidates = []
    for path in glob.glob("/usr/lib/postgresql/*/bin"):
        version = Path(path).parent.name
        if re.fullmatch(r"\d+(\.\d+)?", version) and all(os.access(Path(path) / t, os.X_OK) for t in ("initdb",
                                                                                                       "pg_ctl")):
            candidates.append((tuple(int(p) for p in version.split(".")), Path(path)))
    return max(candidates)[1] if candidates else None


def missing_postgres(reason: str) -> None:
    """No usable server: a failure in CI (the setup script installs it), a skip on a developer machine."""
    message = f"{reason}; install Debian's postgresql package (bash scripts/setup.sh test does, as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, log: Path | None = None, timeout: float = 120) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout, cwd="/")
    if proc.returncode != 0:
        server_log = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}{server_log}"
        )


@contextmanager
def postgres_server(db_name: str = "dagster", user: str = "dagster") -> Iterator[PostgresServer]:
    """Start a throwaway server with one database `db_name` owned by `user` (password authentication
    over TCP on 127.0.0.1 only); stop it and delete its files on exit."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        missing_postgres("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            missing_postgres(f"running as root and there is no {SERVER_USER!r} system user to run the server as")
    if shutil.which("runuser") is None and os.geteuid() == 0:
        missing_postgres("running as root and runuser (util-linux) is missing")

    # Not under pytest's tmp_path: its parents are private to this user and the server user must reach it.
    root = Path(tempfile.mkdtemp(prefix="datapool-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    password = secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    started = False
    try:
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            "initdb",
        )
        pwfile.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = True  # from here on, stop it on the way out even if start reports a failure
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
             "pg_ctl start", log=log)
        server = PostgresServer(host="127.0.0.1", port=port, user=user, password=password, db_name=db_name,
                                version=bin_dir.parent.name)
        admin = server.connect("postgres")
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{db_name}" OWNER "{user}"')
        finally:
            admin.close()
        yield server
    finally:
        try:
            if started and (data / "postmaster.pid").exists():
                stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "stop"]
                try:
                    _run([*stop, "-m", "fast"], "pg_ctl stop", log=log, timeout=60)
                except (RuntimeError, subprocess.TimeoutExpired):
                    _run([*stop, "-m", "immediate"], "pg_ctl stop", log=log, timeout=60)
        finally:
            shutil.rmtree(root, ignore_errors=True)
