"""Running a dataset's job against the persistent Dagster instance: the one implementation behind
`datapool run` / `datapool resume` and `Datapool.run()` / `.resume()`.

Every function raises DatapoolError subclasses with a one-line reason; printing and exit codes are the
CLI's business.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DATASETS_ENV, DatasetSpec
from datapool_pipeline.errors import CommittedButIncomplete, ConfigError, RunAborted
from datapool_pipeline.workflow.progress import Log, no_log

DEFAULT_DAGSTER_HOME = ".dagster_home"
DEFAULT_INSTANCE_YAML = """\
# Written by `datapool` for a new DAGSTER_HOME: SQLite storage, one datapool run per dataset at a time.
concurrency:
  pools:
    default_limit: 1
  runs:
    tag_concurrency_limits:
      - key: datapool/dataset
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_coordinator:
  module: datapool_pipeline.assets.run_coordinator
  class: DatapoolRunCoordinator
telemetry:
  enabled: false
"""


def dagster_home(log: Log = no_log) -> Path:
    """The persistent Dagster instance's folder; a new one gets our dagster.yaml (SQLite, limits)."""
    home = os.environ.get("DAGSTER_HOME")
    path = Path(home or DEFAULT_DAGSTER_HOME).resolve()
    if not home:
        log(f"DAGSTER_HOME is not set, using {path}")
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(DEFAULT_INSTANCE_YAML)
        log(f"wrote a default instance config to {config}")
    os.environ["DAGSTER_HOME"] = str(path)
    create_instance_storage(path)
    return path


def create_instance_storage(home: Path) -> None:
    """Create the instance's SQLite databases under a file lock: two `datapool` processes starting
    on a new DAGSTER_HOME at once would otherwise both create (and stamp) the same tables."""
    marker = home / ".datapool-storage-ready"
    if marker.exists():
        return
    import fcntl

    import dagster as dg

    with open(home / ".datapool-storage.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return
        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)  # run storage
            instance.get_dynamic_partitions("datapool-storage-check")  # event log index
            instance.all_instigator_state()  # schedule storage (sensor cursors)
        marker.touch()


def run_dataset(spec: DatasetSpec, raw_config: dict[str, Any], datasets_path: str, log: Log = no_log) -> str:
    """Register the shards of the files to process, run the dataset's job (here, or through the
    instance's launcher), and return the Dagster run id once it succeeded."""
    run_config = parse_run_config(raw_config)
    from datapool_pipeline.embedding.model import validate_embedding_spec

    validate_embedding_spec(spec.embedding)
    dagster_home(log)
    import dagster as dg

    from datapool_pipeline.assets.names import datapool_job_name
    from datapool_pipeline.assets.run_config import op_run_config
    from datapool_pipeline.launch import prepare_run, run_tags
    from datapool_pipeline.submit import launch_mode, submit_and_follow

    os.environ[DATASETS_ENV] = datasets_path
    from datapool_pipeline.recovery import fail_dead_runs, launcher_tags

    with dg.DagsterInstance.get() as instance:
        for run_id in fail_dead_runs(instance, spec.name):
            log(f"marked run {run_id} failed: its process died; this run takes over")
        prepared = prepare_run(spec, instance, run_config, log=log)
        log(f"{spec.name}: {prepared.files} raw file(s) to process in {len(prepared.shards)} shard(s)")
        dagster_config = op_run_config(f"{spec.asset_prefix}__raw_files", raw_config)
        dagster_config["loggers"] = {"console": {"config": {"log_level": "INFO"}}}
        tags = run_tags(spec, prepared)
        if launch_mode(instance) == "instance":
            run_id, events = submit_and_follow(
                instance, datapool_job_name(spec), dagster_config, tags,
                log=log,
            )
            if not any(e.event_type == dg.DagsterEventType.RUN_SUCCESS for e in events):
                reason, kind = failure_reason(events)
                _raise_failure(spec, instance, run_id, reason, kind)
        else:
            run_id = _execute(spec, datasets_path, instance, dagster_config, {**tags, **launcher_tags()})
    return run_id


def resume_run(spec: DatasetSpec, run_id: str | None, datasets_path: str, log: Log = no_log) -> str:
    """Re-execute a failed run (default: the dataset's most recent) from its failed step; refuse one
    that a later commit superseded. Returns the new run's id."""
    dagster_home(log)
    import dagster as dg

    from datapool_pipeline.assets.runs import DATASET_TAG
    from datapool_pipeline.recovery import HOST_TAG, PID_START_TAG, PID_TAG, fail_dead_runs, launcher_tags

    os.environ[DATASETS_ENV] = datasets_path
    with dg.DagsterInstance.get() as instance:
        fail_dead_runs(instance, spec.name)
        if run_id:
            parent = instance.get_run_by_id(run_id)
            if parent is None or parent.tags.get(DATASET_TAG) != spec.name:
                raise ConfigError(f"no run {run_id} of dataset {spec.name} in {os.environ['DAGSTER_HOME']}")
        else:
            failed = instance.get_runs(
                filters=dg.RunsFilter(tags={DATASET_TAG: spec.name}, statuses=[dg.DagsterRunStatus.FAILURE]),
                limit=1,
            )
            if not failed:
                raise RunAborted(f"dataset {spec.name} has no failed run to resume")
            parent = failed[0]
        if parent.status != dg.DagsterRunStatus.FAILURE:
            raise RunAborted(f"run {parent.run_id} is {parent.status.value}, not failed: nothing to resume")
        _refuse_superseded(spec, instance, parent.run_id)
        log(f"resuming run {parent.run_id} from its failed step")
        # Keep the parent's dataset and shard-range tags; the launcher tags are this process's.
        kept = {
            k: v
            for k, v in parent.tags.items()
            if k.startswith("dagster/asset_partition_range") or (
                k not in (HOST_TAG, PID_TAG, PID_START_TAG) and not k.startswith("dagster/"))
        }
        new_run_id = _execute(
            spec, datasets_path, instance, dict(parent.run_config), {**kept, **launcher_tags()},
            reexecution=dg.ReexecutionOptions.from_failure(parent.run_id, instance),
        )
    return new_run_id


def _execute(
    spec: DatasetSpec, datasets_path: str, instance: Any, run_config: dict[str, Any], tags: dict[str, str],
    reexecution: Any = None,
) -> str:
    import dagster as dg

    # The file's content is part of the key: Dagster caches a reconstructed job per argument tuple, and an
    # edited datasets.yaml (a new input, say) must not run with the definitions of the previous version.
    content = hashlib.sha256(Path(datasets_path).read_bytes()).hexdigest()[:16]
    job = dg.build_reconstructable_job(
        "datapool_pipeline.definitions", "job_for_dataset", reconstructable_args=(spec.name, datasets_path, content)
    )
    logging.getLogger("dagster").setLevel(logging.INFO)
    with dg.execute_job(
        job, instance=instance, run_config=run_config, tags=tags, raise_on_error=False,
        reexecution_options=reexecution,
    ) as result:
        if not result.success:
            reason, kind = failure_reason(result.all_events)
            _raise_failure(spec, instance, result.run_id, reason, kind)
        return result.run_id


def _raise_failure(spec: DatasetSpec, instance: Any, run_id: str, reason: str, kind: str) -> None:
    """A run failed: say whether its tag was committed (then only what came after is missing)."""
    commit = group_commit(spec, instance, run_id)
    if commit is not None:
        raise CommittedButIncomplete(
            f"tag {commit.tag} was committed ({commit.n_samples} samples, datapool {commit.datapool_size}), "
            f"then a later step failed: {reason}; its report is missing or incomplete: `datapool resume "
            f"{spec.name}` rebuilds it (Dagster run {run_id})"
        )
    error = ConfigError if kind == "config" else RunAborted
    raise error(f"{reason} (Dagster run {run_id})")


def group_commit(spec: DatasetSpec, instance: Any, run_id: str) -> Any:
    """The commit made by this run or by another attempt of it (re-executions share a run group)."""
    group = instance.get_run_group(run_id)
    ids = {r.run_id for r in group[1]} if group else {run_id}
    commits = DatapoolStore(storage_for(spec, "output")).load_commits()
    return next((c for c in reversed(commits) if c.run_id in ids), None)


def _refuse_superseded(spec: DatasetSpec, instance: Any, run_id: str) -> None:
    """A failed run that did not commit, and after whose start another tag was committed, selected
    against a datapool that no longer exists: re-executing it would commit stale work."""
    from datetime import datetime, timezone

    if group_commit(spec, instance, run_id) is not None:
        return  # its tag is committed: resuming only finishes what came after (the report)
    record = instance.get_run_record_by_id(run_id)
    started = record.create_timestamp.replace(microsecond=0) if record else None
    if started is not None and started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    commits = DatapoolStore(storage_for(spec, "output")).load_commits()
    later = [c for c in commits if started and datetime.fromisoformat(c.created_at) >= started]
    if later:
        raise RunAborted(
            f"run {run_id} was superseded: tag {later[-1].tag} was committed after it started; start a new "
            f"run instead (`datapool run {spec.name} --use-datapool`)"
        )


def failure_reason(events: Any) -> tuple[str, str]:
    """The first failed step's one-line reason, and its kind ("config" or "aborted")."""
    for event in events:
        if event.is_step_failure:
            user = event.step_failure_data.user_failure_data
            if user is not None and user.description:
                kind = user.metadata.get("reason")
                return user.description, str(kind.value if kind is not None else "aborted")
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause
            message = error.message.strip().splitlines()[0] if error.message else error.cls_name
            # "StorageError: ..." or "datapool_pipeline.storage.base.StorageError: ...": the message only.
            return re.sub(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name)}: ", "", message), "aborted"
    return "the Dagster run failed", "aborted"
