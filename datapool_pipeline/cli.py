"""`datapool`: run a dataset's pipeline through Dagster, list its tags, export a tag's filenames."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.config import load_run_config_file, parse_run_config
from datapool_pipeline.datapool import INITIAL_TAG, LATEST_TAG, DatapoolStore
from datapool_pipeline.datasets import DATASETS_ENV, DatasetSpec, datasets_file, load_datasets
from datapool_pipeline.errors import CommittedButIncomplete, ConfigError, DatapoolError, RunAborted

EXIT_ABORTED = 1
EXIT_BAD_CONFIG = 2
EXIT_COMMITTED_INCOMPLETE = 3
EXIT_DAMAGED = 4  # `datapool check` found damage (that --repair did not repair)
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
telemetry:
  enabled: false
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datapool", description="Grow a curated dataset from a bucket, one diverse tag per run."
    )
    parser.add_argument(
        "--datasets", help=f"datasets.yaml to use (default: ${DATASETS_ENV} or ./datasets.yaml)", default=None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process new raw files and commit a new tag (through Dagster)")
    run.add_argument("dataset")
    run.add_argument("--config", help="run config YAML with worker_config / selection_config")
    amount = run.add_mutually_exclusive_group()
    amount.add_argument("--n-samples", type=int, help="new samples to add (overrides the config file)")
    amount.add_argument("--proportion-samples", type=float, help="fraction of the new samples to add")
    run.add_argument("--process-all", action="store_true", help="consider every raw file, not only new ones")
    run.add_argument("--use-datapool", action="store_true", help="grow the existing datapool")
    resume = sub.add_parser(
        "resume", help="re-execute a failed run from its failed step (e.g. after a crash) through Dagster"
    )
    resume.add_argument("dataset")
    resume.add_argument("--run-id", help="the failed run (default: the dataset's most recent failed run)")
    tags = sub.add_parser("tags", help="list tags, newest first, initial-tag last, with sample counts")
    tags.add_argument("dataset")
    export = sub.add_parser("export", help="print the filenames of a tag's samples, one per line")
    export.add_argument("dataset")
    export.add_argument(
        "--tag", required=True, help=f"a tag name, {INITIAL_TAG} for the whole datapool, or {LATEST_TAG}"
    )
    export.add_argument(
        "--uri", action="store_true", help="print full locations (datasource + key) instead of keys"
    )
    report = sub.add_parser("report", help="(re)build a tag's report: report.pdf, report.json, embedding_view.html")
    report.add_argument("dataset")
    report.add_argument("--tag", default=LATEST_TAG, help=f"a tag name or {LATEST_TAG} (default)")
    check = sub.add_parser(
        "check", help="verify the datapool state (manifests, parts, frames, index, leftovers); exit 4 if damaged"
    )
    check.add_argument("dataset")
    check.add_argument(
        "--repair", action="store_true",
        help="drop a damaged last commit and delete old leftovers (temp files, unreferenced parts and frames)",
    )
    for command in sub.choices.values():  # `datapool tags X --datasets F` works as well as before the command
        command.add_argument("--datasets", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        specs = load_datasets(args.datasets)
        if args.dataset not in specs:
            raise ConfigError(
                f"no dataset named {args.dataset!r} in {datasets_file(args.datasets)}; "
                f"known: {', '.join(sorted(specs))}"
            )
        spec = specs[args.dataset]
        if args.command == "tags":
            return _tags(spec)
        if args.command == "export":
            return _export(spec, args.tag, args.uri)
        if args.command == "resume":
            return _resume(spec, args)
        if args.command == "report":
            return _report(spec, args.tag)
        if args.command == "check":
            return _check(spec, args.repair)
        return _run(spec, args)
    except ConfigError as exc:
        print(f"datapool: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except CommittedButIncomplete as exc:
        print(f"datapool: committed, incomplete: {exc}", file=sys.stderr)
        return EXIT_COMMITTED_INCOMPLETE
    except DatapoolError as exc:
        print(f"datapool: aborted: {exc}", file=sys.stderr)
        return EXIT_ABORTED


def _report(spec: DatasetSpec, tag: str) -> int:
    from datapool_pipeline.report import build_report, write_report

    store = DatapoolStore(storage_for(spec, "output"))
    store.check_owner(spec.name, spec.type, claim=False)
    commit = store.load_state().commit_of(tag)
    say = lambda m: print(f"datapool: {m}", file=sys.stderr)  # noqa: E731
    written = write_report(store, build_report(spec, store, commit), storage_for(spec, "input"), log=say, warn=say)
    print(f"tag {commit.tag}: report {store.storage.display(written['pdf'])} (also report.json, embedding_view.html)")
    return 0


def _tags(spec: DatasetSpec) -> int:
    store = DatapoolStore(storage_for(spec, "output"))
    store.check_owner(spec.name, spec.type, claim=False)
    state = store.load_state()
    width = max([len(INITIAL_TAG), *(len(c.tag) for c in state.commits)])
    for commit in reversed(state.commits):
        print(f"{commit.tag:<{width}}  {commit.n_samples}")
    print(f"{INITIAL_TAG:<{width}}  {state.size}")
    return 0


def _export(spec: DatasetSpec, tag: str, uri: bool) -> int:
    store = DatapoolStore(storage_for(spec, "output"))
    store.check_owner(spec.name, spec.type, claim=False)
    samples = store.load_state().tag_samples(tag)
    base = storage_for(spec, "input" if spec.type == "IMAGES" else "output")
    out = sys.stdout
    for name in samples.sort(["raw_key", "frame_index"])["sample_id"].to_list():
        out.write((base.display(name) if uri else name) + "\n")
    return 0


def _check(spec: DatasetSpec, repair: bool) -> int:
    from datapool_pipeline.datapool.check import check_datapool

    store = DatapoolStore(storage_for(spec, "output"))
    try:
        store.check_owner(spec.name, spec.type, claim=False)  # another dataset's datapool: exit 2
    except ConfigError:
        raise
    except DatapoolError:
        pass  # a damaged dataset.json: one of the check's findings
    result = check_datapool(store, dataset_type=spec.type, repair=repair)
    for finding in result.findings:
        print(finding.line())
    print(f"datapool check {spec.name} ({store.storage.display()}): {result.summary()}")
    return EXIT_DAMAGED if result.damage else 0


def _merged_run_config(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = load_run_config_file(args.config) if args.config else {}
    worker = dict(raw.get("worker_config") or {})
    selection = dict(raw.get("selection_config") or {})
    if args.use_datapool:
        worker["use_datapool"] = True
    if args.process_all:
        worker["datasource"] = {**(worker.get("datasource") or {}), "process_all": True}
    if args.n_samples is not None:
        selection.pop("proportion_samples", None)
        selection["n_samples"] = args.n_samples
    if args.proportion_samples is not None:
        selection.pop("n_samples", None)
        selection["proportion_samples"] = args.proportion_samples
    return {**raw, "worker_config": worker, "selection_config": selection}


def _dagster_home() -> Path:
    """The persistent Dagster instance's folder; a new one gets our dagster.yaml (SQLite, limits)."""
    home = os.environ.get("DAGSTER_HOME")
    path = Path(home or DEFAULT_DAGSTER_HOME).resolve()
    if not home:
        print(f"datapool: DAGSTER_HOME is not set, using {path}", file=sys.stderr)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(DEFAULT_INSTANCE_YAML)
        print(f"datapool: wrote a default instance config to {config}", file=sys.stderr)
    os.environ["DAGSTER_HOME"] = str(path)
    _create_instance_storage(path)
    return path


def _create_instance_storage(home: Path) -> None:
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


def _run(spec: DatasetSpec, args: argparse.Namespace) -> int:
    raw_config = _merged_run_config(args)
    run_config = parse_run_config(raw_config)
    from datapool_pipeline.embedding.model import validate_embedding_spec

    validate_embedding_spec(spec.embedding)
    _dagster_home()
    import dagster as dg

    from datapool_pipeline.assets.names import datapool_job_name
    from datapool_pipeline.assets.run_config import op_run_config
    from datapool_pipeline.launch import prepare_run, run_tags
    from datapool_pipeline.submit import launch_mode, submit_and_follow

    datasets_path = str(datasets_file(args.datasets).resolve())
    os.environ[DATASETS_ENV] = datasets_path
    from datapool_pipeline.recovery import fail_dead_runs, launcher_tags

    with dg.DagsterInstance.get() as instance:
        for run_id in fail_dead_runs(instance, spec.name):
            print(f"datapool: marked run {run_id} failed: its process died; this run takes over", file=sys.stderr)
        prepared = prepare_run(spec, instance, run_config, log=lambda m: print(f"datapool: {m}", file=sys.stderr))
        print(
            f"datapool: {spec.name}: {prepared.files} raw file(s) to process in {len(prepared.shards)} shard(s)",
            file=sys.stderr,
        )
        dagster_config = op_run_config(f"{spec.asset_prefix}__raw_files", raw_config)
        dagster_config["loggers"] = {"console": {"config": {"log_level": "INFO"}}}
        tags = run_tags(spec, prepared)
        if launch_mode(instance) == "instance":
            run_id, events = submit_and_follow(
                instance, datapool_job_name(spec), dagster_config, tags,
                log=lambda m: print(f"datapool: {m}", file=sys.stderr),
            )
            if not any(e.event_type == dg.DagsterEventType.RUN_SUCCESS for e in events):
                reason, kind = _failure_reason(events)
                _raise_failure(spec, instance, run_id, reason, kind)
        else:
            run_id = _execute(spec, datasets_path, instance, dagster_config, {**tags, **launcher_tags()})
    _print_commit(spec, run_id)
    return 0


def _execute(
    spec: DatasetSpec, datasets_path: str, instance: Any, run_config: dict[str, Any], tags: dict[str, str],
    reexecution: Any = None,
) -> str:
    import dagster as dg

    job = dg.build_reconstructable_job(
        "datapool_pipeline.definitions", "job_for_dataset", reconstructable_args=(spec.name, datasets_path)
    )
    logging.getLogger("dagster").setLevel(logging.INFO)
    with dg.execute_job(
        job, instance=instance, run_config=run_config, tags=tags, raise_on_error=False,
        reexecution_options=reexecution,
    ) as result:
        if not result.success:
            reason, kind = _failure_reason(result.all_events)
            _raise_failure(spec, instance, result.run_id, reason, kind)
        return result.run_id


def _raise_failure(spec: DatasetSpec, instance: Any, run_id: str, reason: str, kind: str) -> None:
    """A run failed: say whether its tag was committed (then only what came after is missing)."""
    commit = _group_commit(spec, instance, run_id)
    if commit is not None:
        raise CommittedButIncomplete(
            f"tag {commit.tag} was committed ({commit.n_samples} samples, datapool {commit.datapool_size}), "
            f"then a later step failed: {reason}; its report is missing or incomplete: `datapool resume "
            f"{spec.name}` rebuilds it (Dagster run {run_id})"
        )
    error = ConfigError if kind == "config" else RunAborted
    raise error(f"{reason} (Dagster run {run_id})")


def _group_commit(spec: DatasetSpec, instance: Any, run_id: str) -> Any:
    """The commit made by this run or by another attempt of it (re-executions share a run group)."""
    group = instance.get_run_group(run_id)
    ids = {r.run_id for r in group[1]} if group else {run_id}
    commits = DatapoolStore(storage_for(spec, "output")).load_commits()
    return next((c for c in reversed(commits) if c.run_id in ids), None)


def _resume(spec: DatasetSpec, args: argparse.Namespace) -> int:
    _dagster_home()
    import dagster as dg

    from datapool_pipeline.assets.runs import DATASET_TAG
    from datapool_pipeline.recovery import HOST_TAG, PID_TAG, fail_dead_runs, launcher_tags

    datasets_path = str(datasets_file(args.datasets).resolve())
    os.environ[DATASETS_ENV] = datasets_path
    with dg.DagsterInstance.get() as instance:
        fail_dead_runs(instance, spec.name)
        if args.run_id:
            parent = instance.get_run_by_id(args.run_id)
            if parent is None or parent.tags.get(DATASET_TAG) != spec.name:
                raise ConfigError(f"no run {args.run_id} of dataset {spec.name} in {os.environ['DAGSTER_HOME']}")
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
        print(f"datapool: resuming run {parent.run_id} from its failed step", file=sys.stderr)
        # Keep the parent's dataset and shard-range tags; the launcher tags are this process's.
        kept = {
            k: v
            for k, v in parent.tags.items()
            if k.startswith("dagster/asset_partition_range") or (
                k not in (HOST_TAG, PID_TAG) and not k.startswith("dagster/"))
        }
        run_id = _execute(
            spec, datasets_path, instance, dict(parent.run_config), {**kept, **launcher_tags()},
            reexecution=dg.ReexecutionOptions.from_failure(parent.run_id, instance),
        )
    _print_commit(spec, run_id)
    return 0


def _refuse_superseded(spec: DatasetSpec, instance: Any, run_id: str) -> None:
    """A failed run that did not commit, and after whose start another tag was committed, selected
    against a datapool that no longer exists: re-executing it would commit stale work."""
    from datetime import datetime, timezone

    if _group_commit(spec, instance, run_id) is not None:
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


def _print_commit(spec: DatasetSpec, run_id: str) -> None:
    state = DatapoolStore(storage_for(spec, "output")).load_state()
    commit = next((c for c in reversed(state.commits) if c.run_id == run_id), None)
    if commit is None:
        print(f"run {run_id} finished; the datapool holds {state.size} samples")
        return
    print(
        f"tag {commit.tag}: {commit.n_samples} samples added; datapool {commit.datapool_size - commit.n_samples}"
        f" -> {commit.datapool_size}; report: "
        f"{storage_for(spec, 'output').display(DatapoolStore.report_prefix(commit.tag))}/report.pdf"
        " (also report.json, embedding_view.html)"
    )


def _failure_reason(events: Any) -> tuple[str, str]:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
