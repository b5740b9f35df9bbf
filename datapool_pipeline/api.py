"""The Python API: what the `datapool` CLI does, for notebooks and scripts.

    from datapool_pipeline import Datapool

    pool = Datapool.open("videos-datapool", datasets="datasets.yaml")
    pool.run(n_samples=100)                      # a new tag (through Dagster, like `datapool run`)
    pool.tags()                                  # [("2026-...Z", 100), ..., ("initial-tag", 100)]
    pool.export("initial-tag")                   # the filenames of the whole datapool
    pool.read("latest")                          # the newest tag's samples, with embeddings (polars)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import polars as pl

from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.datapool import INITIAL_TAG, LATEST_TAG, Commit, DatapoolStore
from datapool_pipeline.datasets import DatasetSpec, datasets_file, load_datasets
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.workflow.progress import Log, no_log


@dataclass(frozen=True)
class Datapool:
    """One dataset of a datasets.yaml: its datapool, tags and runs."""

    spec: DatasetSpec
    datasets_path: str

    @classmethod
    def open(cls, name: str, datasets: str | os.PathLike[str] | None = None) -> Datapool:
        """The dataset `name` of `datasets` (default: $DATAPOOL_DATASETS or ./datasets.yaml)."""
        path = datasets_file(datasets)
        specs = load_datasets(path)
        if name not in specs:
            raise ConfigError(f"no dataset named {name!r} in {path}; known: {', '.join(sorted(specs))}")
        return cls(specs[name], str(path.resolve()))

    @property
    def store(self) -> DatapoolStore:
        store = DatapoolStore(storage_for(self.spec, "output"))
        store.check_owner(self.spec.name, self.spec.type, claim=False)
        return store

    def commits(self) -> list[Commit]:
        """One commit per tag, oldest first."""
        return self.store.load_commits()

    def tags(self) -> list[tuple[str, int]]:
        """(tag, samples), newest first, then `initial-tag` with the size of the whole datapool."""
        state = self.store.load_state()
        return [(c.tag, c.n_samples) for c in reversed(state.commits)] + [(INITIAL_TAG, state.size)]

    def read(self, tag: str = INITIAL_TAG) -> pl.DataFrame:
        """A tag's samples (`initial-tag`: the datapool; `latest`: the newest tag) with their embeddings."""
        return self.store.load_state().tag_samples(tag)

    def export(self, tag: str = INITIAL_TAG, *, uri: bool = False) -> list[str]:
        """The filenames of a tag's samples: frame images in the output (videos) or input keys (images);
        with `uri`, full locations."""
        samples = self.read(tag).sort(["raw_key", "frame_index"])["sample_id"].to_list()
        if not uri:
            return samples
        base = storage_for(self.spec, "input" if self.spec.type == "IMAGES" else "output")
        return [base.display(name) for name in samples]

    def report(self, tag: str = LATEST_TAG, log: Log = no_log) -> str:
        """(Re)build a tag's report; returns the location of its report.pdf."""
        from datapool_pipeline.report import build_report, write_report

        store = self.store
        commit = store.load_state().commit_of(tag)
        input_storage = storage_for(self.spec, "input")
        written = write_report(store, build_report(self.spec, store, commit), input_storage, log=log, warn=log)
        return store.storage.display(written["pdf"])

    def run(
        self,
        *,
        n_samples: int | None = None,
        proportion_samples: float | None = None,
        use_datapool: bool = False,
        process_all: bool = False,
        config: dict[str, Any] | None = None,
        log: Log = no_log,
    ) -> Commit | None:
        """One datapool run against the instance in $DAGSTER_HOME (like `datapool run`); returns the new
        tag's commit. `config` is a run config mapping (worker_config / selection_config); the keyword
        arguments override it."""
        from datapool_pipeline.running import run_dataset

        raw = dict(config or {})
        worker = dict(raw.get("worker_config") or {})
        selection = dict(raw.get("selection_config") or {})
        if use_datapool:
            worker["use_datapool"] = True
        if process_all:
            worker["datasource"] = {**(worker.get("datasource") or {}), "process_all": True}
        if n_samples is not None:
            selection.pop("proportion_samples", None)
            selection["n_samples"] = n_samples
        if proportion_samples is not None:
            selection.pop("n_samples", None)
            selection["proportion_samples"] = proportion_samples
        run_id = run_dataset(self.spec, {**raw, "worker_config": worker, "selection_config": selection},
                             self.datasets_path, log=log)
        return self.commit_of_run(run_id)

    def commit_of_run(self, run_id: str) -> Commit | None:
        return next((c for c in reversed(self.commits()) if c.run_id == run_id), None)
