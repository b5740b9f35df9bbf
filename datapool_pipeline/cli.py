"""`datapool`: run a dataset's pipeline through Dagster, list its tags, export a tag's filenames."""

from __future__ import annotations

import argparse
import sys

from datapool_pipeline.api import Datapool
from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.config import load_run_config_file
from datapool_pipeline.datapool import INITIAL_TAG, LATEST_TAG, Commit, DatapoolStore
from datapool_pipeline.datasets import DATASETS_ENV, DatasetSpec
from datapool_pipeline.errors import CommittedButIncomplete, ConfigError, DatapoolError

EXIT_ABORTED = 1
EXIT_BAD_CONFIG = 2
EXIT_COMMITTED_INCOMPLETE = 3
EXIT_DAMAGED = 4  # `datapool check` found damage (that --repair did not repair)


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
        pool = Datapool.open(args.dataset, args.datasets)
        if args.command == "tags":
            return _tags(pool)
        if args.command == "export":
            return _export(pool, args.tag, args.uri)
        if args.command == "resume":
            return _resume(pool, args)
        if args.command == "report":
            return _report(pool, args.tag)
        if args.command == "check":
            return _check(pool.spec, args.repair)
        return _run(pool, args)
    except ConfigError as exc:
        print(f"datapool: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except CommittedButIncomplete as exc:
        print(f"datapool: committed, incomplete: {exc}", file=sys.stderr)
        return EXIT_COMMITTED_INCOMPLETE
    except DatapoolError as exc:
        print(f"datapool: aborted: {exc}", file=sys.stderr)
        return EXIT_ABORTED


def _report(pool: Datapool, tag: str) -> int:
    location = pool.report(tag, log=_say)
    print(f"tag {pool.store.load_state().commit_of(tag).tag}: report {location} (also report.json, "
          "embedding_view.html)")
    return 0


def _tags(pool: Datapool) -> int:
    listed = pool.tags()
    width = max(len(tag) for tag, _ in listed)
    for tag, samples in listed:
        print(f"{tag:<{width}}  {samples}")
    return 0


def _export(pool: Datapool, tag: str, uri: bool) -> int:
    sys.stdout.writelines(name + "\n" for name in pool.export(tag, uri=uri))
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


def _run(pool: Datapool, args: argparse.Namespace) -> int:
    commit = pool.run(
        n_samples=args.n_samples, proportion_samples=args.proportion_samples, use_datapool=args.use_datapool,
        process_all=args.process_all, config=load_run_config_file(args.config) if args.config else None, log=_say,
    )
    _print_commit(pool, commit)
    return 0


def _resume(pool: Datapool, args: argparse.Namespace) -> int:
    from datapool_pipeline.running import resume_run

    run_id = resume_run(pool.spec, args.run_id, pool.datasets_path, log=_say)
    _print_commit(pool, pool.commit_of_run(run_id))
    return 0


def _say(message: str) -> None:
    print(f"datapool: {message}", file=sys.stderr)


def _print_commit(pool: Datapool, commit: Commit | None) -> None:
    if commit is None:
        print(f"run finished; the datapool holds {pool.tags()[-1][1]} samples")
        return
    report = pool.store.storage.display(DatapoolStore.report_prefix(commit.tag))
    print(
        f"tag {commit.tag}: {commit.n_samples} samples added; datapool {commit.datapool_size - commit.n_samples}"
        f" -> {commit.datapool_size}; report: {report}/report.pdf (also report.json, embedding_view.html)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
