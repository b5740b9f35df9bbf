"""The vendor scenario (all four runs) through `datapool run` on a Dagster instance stored in a real
PostgreSQL server (throwaway, 127.0.0.1), while a real dagster-webserver and dagster-daemon serve the
same instance with the dataset's sensor on; then a video added while they are up is picked up by a run
the sensor starts."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.dagster.postgres import PostgresServer, postgres_server
from datapool_pipeline_tests.dagster.servers import DONE, REPO, dagster_servers, wait_for
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml

# Slow tier: a PostgreSQL server, a Dagster webserver and daemon.
pytestmark = pytest.mark.slow

DATASET = "videos-datapool"
SENSOR = "videos_datapool_new_files"
SENSOR_INTERVAL = 15
"""Seconds between two sensor ticks (not 1): the files of a CLI run arrive right after a tick, so
`datapool run` registers them before the next tick; with a tick in between, the sensor would claim them
first and start its own run (its n_samples), and the scenario's counts would depend on who won."""
RUNS_QUERY = "{ runsOrError { __typename ... on Runs { results { runId status } } } }"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer, request: pytest.FixtureRequest
) -> Path:
    """Overrides the SQLite home of conftest (so its `cli` fixture runs on this one): a dagster.yaml
    with Postgres storage in a fresh database, the repository's limits and queued run coordinator."""
    db = replace(postgres, db_name="t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower())
    admin = postgres.connect("postgres")
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db.db_name}" OWNER "{db.user}"')
    finally:
        admin.close()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["storage"] = {
        "postgres": {
            "postgres_db": {
                "hostname": {"env": "DAGSTER_PG_HOST"},
                "port": {"env": "DAGSTER_PG_PORT"},
                "db_name": {"env": "DAGSTER_PG_DB"},
                "username": {"env": "DAGSTER_PG_USERNAME"},
                "password": {"env": "DAGSTER_PG_PASSWORD"},
                # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which dagster-postgres does not
                # install (it depends on psycopg2-binary): name the driver.
                "scheme": "postgresql+psycopg2",
            }
        }
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for key, value in db.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def sensor_ticks(instance: dg.DagsterInstance) -> list[Any]:
    """The sensor's ticks, newest first, as the daemon records them in the instance."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == SENSOR:
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5))
    return []


def right_after_a_tick(instance: dg.DagsterInstance, logs: Callable[[], str], timeout: float = SENSOR_INTERVAL + 60
                      ) -> None:
    """Return as soon as a new sensor tick has finished, early enough that the next one is at least
    SENSOR_INTERVAL / 2 s away (a slow tick: wait for the next)."""
    for _ in range(3):
        before = {t.tick_id for t in sensor_ticks(instance)}

        def finished_tick(before: set[int] = before) -> Any:
            ticks = [t for t in sensor_ticks(instance) if t.tick_id not in before and t.status != TickStatus.STARTED]
            return ticks[0] if ticks else None

        tick = wait_for("a sensor tick", finished_tick, timeout=timeout, logs=logs)
        assert tick.status == TickStatus.SKIPPED, f"the sensor did not skip: {tick.status} {tick.tick_data}"
        if time.time() - tick.timestamp < SENSOR_INTERVAL / 2:
            return
    raise AssertionError(f"sensor ticks take more than {SENSOR_INTERVAL / 2} s: no window for the CLI run")


def sensor_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs the dataset's sensor requested (Dagster tags them with the sensor's name)."""
    return list(instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": SENSOR})))


def tags(cli, ds: tuple[str, str]) -> list[tuple[str, int]]:
    result = cli(*ds, "tags", DATASET)
    assert result.code == 0, result.err
    return [(line.split()[0], int(line.split()[1])) for line in result.out.splitlines()]


def export(cli, ds: tuple[str, str], tag: str) -> list[str]:
    result = cli(*ds, "export", DATASET, "--tag", tag)
    assert result.code == 0, result.err
    return result.out.splitlines()


def videos_in(names: list[str]) -> set[str]:
    return {name.split("/")[1] for name in names}


@pytest.mark.timeout(600)
def test_vendor_scenario_on_postgres_with_webserver_daemon_and_sensor(
    tmp_path: Path, cli, dagster_home: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPOOL_EXECUTOR", "in_process")  # sensor / UI runs: one process, faster on 2 cores
    import datapool_pipeline.embedding.model  # noqa: F401  (import torch/open_clip now, not inside a window)

    input_dir, output = tmp_path / "input" / "videos", tmp_path / "lightly"
    staging = tmp_path / "staging"  # videos are made here, then renamed in: they appear complete at once
    input_dir.mkdir(parents=True)
    add_videos(staging, ["a.mov", "b.mov", "c.mov"], seconds=4)  # 3 x 40 frames
    add_videos(staging, ["d.mov", "e.mov"], first_source=3, seconds=3)  # 2 x 30 frames
    add_videos(staging, ["f.mov"], first_source=5, seconds=1)  # 10 frames, for the sensor
    sensor_block = (
        f"    sensor:\n      enabled: true\n      minimum_interval_seconds: {SENSOR_INTERVAL}\n"
        "      selection_config: {n_samples: 3}\n"
    )
    datasets = write_datasets_yaml(
        tmp_path / "datasets.yaml", DATASET, "VIDEOS", str(input_dir), str(output), extra=sensor_block
    )
    ds = ("--datasets", str(datasets))
    clock = [time.monotonic()]

    def phase(what: str) -> None:  # shown with -s or on failure: where the time goes
        now = time.monotonic()
        print(f"{what}: {now - clock[0]:.1f} s")
        clock[0] = now

    def arrive(*names: str) -> None:
        for name in names:
            (staging / name).rename(input_dir / name)

    with dagster_servers(tmp_path, datasets, dagster_home) as servers, dg.DagsterInstance.get() as instance:
        logs = servers.log_text
        # 1. Three videos, first run: 100 samples, initial-tag holds 100.
        right_after_a_tick(instance, logs, timeout=180)  # the daemon loads the code location first
        phase("servers up, first sensor tick")
        arrive("a.mov", "b.mov", "c.mov")
        first = cli(*ds, "run", DATASET, "--n-samples", "100")
        phase("run 1")
        assert first.code == 0, first.err + logs()[-3000:]
        listed = tags(cli, ds)
        assert len(listed) == 2 and listed[0][1] == 100 and listed[-1] == ("initial-tag", 100)
        run1 = export(cli, ds, listed[0][0])
        assert len(set(run1)) == len(run1) == 100 and videos_in(run1) == {"a.mov", "b.mov", "c.mov"}
        assert all((output / name).is_file() for name in run1)
        assert not sensor_runs(instance), "the sensor started a run over files `datapool run` was processing"

        # 2. Two more videos, run with the datapool: 50 samples, all from the new videos.
        right_after_a_tick(instance, logs)
        arrive("d.mov", "e.mov")
        phase("sensor tick")
        second = cli(*ds, "run", DATASET, "--use-datapool", "--n-samples", "50")
        phase("run 2")
        assert second.code == 0, second.err + logs()[-3000:]
        listed = tags(cli, ds)
        assert [n for _, n in listed] == [50, 100, 150]
        run2 = export(cli, ds, listed[0][0])
        assert len(set(run2)) == 50 and videos_in(run2) == {"d.mov", "e.mov"}
        assert all((output / name).is_file() for name in run2)
        pool = export(cli, ds, "initial-tag")
        assert len(set(pool)) == len(pool) == 150 and set(pool) == set(run1) | set(run2)
        assert not sensor_runs(instance), "the sensor started a run over files `datapool run` was processing"

        # 3. Nothing new: the run aborts with the reason, nothing is committed.
        third = cli(*ds, "run", DATASET, "--use-datapool", "--n-samples", "50")
        phase("run 3")
        assert third.code == 1, third.out + third.err
        assert "no new raw files" in third.err and "process_all" in third.err
        assert [n for _, n in tags(cli, ds)] == [50, 100, 150]

        # 4. process_all: 20 more samples chosen from all 5 videos, none already in the datapool.
        fourth = cli(*ds, "run", DATASET, "--use-datapool", "--process-all", "--n-samples", "20")
        phase("run 4")
        assert fourth.code == 0, fourth.err + logs()[-3000:]
        listed = tags(cli, ds)
        assert [n for _, n in listed] == [20, 50, 100, 170]
        run4 = export(cli, ds, listed[0][0])
        assert len(set(run4)) == 20 and not set(run4) & set(pool)
        assert all((output / name).is_file() for name in run4)

        # 5. A video arrives while the servers are up: the sensor starts a run that commits it.
        arrive("f.mov")

        store = DatapoolStore(LocalStorage(output))

        def sensor_runs_done() -> list[dg.DagsterRun] | None:
            runs = sensor_runs(instance)
            if not runs or any(r.status not in DONE for r in runs):
                return None
            failed = any(r.status != dg.DagsterRunStatus.SUCCESS for r in runs)
            return runs if failed or len(store.load_commits()) == 4 else None

        finished = wait_for("the sensor's run(s) to finish", sensor_runs_done, timeout=SENSOR_INTERVAL + 300,
                            logs=logs)
        phase("sensor run(s) finished")
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in finished), logs()[-3000:]
        listed = tags(cli, ds)
        assert [n for _, n in listed] == [3, 20, 50, 100, 173]
        run5 = export(cli, ds, listed[0][0])
        assert len(set(run5)) == 3 and videos_in(run5) == {"f.mov"}
        pool = export(cli, ds, "initial-tag")
        assert len(pool) == len(set(pool)) == 173 and set(pool) == set(run1) | set(run2) | set(run4) | set(run5)
        assert all((output / name).is_file() for name in pool)
        samples = store.load_state().samples
        assert samples["sample_id"].n_unique() == samples.height == 173
        commits = store.load_commits()
        assert [c.n_samples for c in commits] == [100, 50, 20, 3]
        assert commits[-1].run_id in {r.run_id for r in finished}

        # The instance is really Postgres, the runs and the tags' materializations are in it, and the
        # webserver (its own process) reads the same runs from it.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert not (dagster_home / "history").exists()  # where SQLite would keep runs.db
        runs = instance.get_runs(dg.RunsFilter(tags={"datapool/dataset": DATASET}))
        assert all(r.status in DONE for r in runs)
        succeeded = {r.run_id for r in runs if r.status == dg.DagsterRunStatus.SUCCESS}
        assert {c.run_id for c in commits} <= succeeded
        events = instance.fetch_materializations(dg.AssetKey(["videos_datapool", "tag"]), limit=20).records
        assert sorted(e.asset_materialization.metadata["tag"].value for e in events) == sorted(c.tag for c in commits)
        with postgres.connect(os.environ["DAGSTER_PG_DB"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            in_db = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM job_ticks")
            (ticks,) = cur.fetchone()
        conn.close()
        assert all(in_db.get(c.run_id) == "SUCCESS" for c in commits)
        assert ticks >= 3  # the daemon's sensor ticks went to Postgres too
        request = urllib.request.Request(
            f"http://127.0.0.1:{servers.port}/graphql", data=json.dumps({"query": RUNS_QUERY}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            ui_runs = json.loads(response.read())["data"]["runsOrError"]["results"]
        assert {r["runId"] for r in ui_runs} == {r.run_id for r in instance.get_runs()}
        assert {r["runId"] for r in ui_runs if r["status"] == "SUCCESS"} >= {c.run_id for c in commits}
    assert "Traceback" not in (servers.logs / "webserver.log").read_text()
