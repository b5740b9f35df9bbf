"""Datapool state in the output datasource: immutable Parquet parts plus a chain of commit manifests.

Layout (under the output datasource):

    frames/<raw key>/<version hash>-<frame>.png      selected video frames (full resolution)
    datapool/commits/<seq>.json                      one manifest per tag, created with put-if-absent
    datapool/samples/<seq>-<tag>-<id>.parquet        the samples (with embeddings) of one tag
    datapool/processed/<seq>-<tag>-<id>.parquet      the raw files that run processed
    datapool/shards/registry/<time>-<id>.parquet     which raw files make up which shard
    datapool/shards/<shard>/files.parquet            decode status per raw file of the shard
    datapool/shards/<shard>/frames.parquet           frame manifest (index, timestamp, stats)
    datapool/shards/<shard>/embeddings/<model>.parquet   cached embeddings per model
    datapool/staging/<run id>.parquet|.json          a selection not yet committed
    datapool/reports/<tag>/...                       report.json, report.pdf, embedding_view.html
    datapool/index/<model>.hnsw|.json                hnswlib index over the datapool (cache, pool_index.py)
    datapool/dataset.json                            which dataset (name, type) owns this datapool

A tag exists exactly when its commit manifest exists: the manifest is the last write of a run and
is created atomically only if absent, so two runs can never both commit the same sequence number.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import polars as pl

from datapool_pipeline.datapool import tables
from datapool_pipeline.errors import ConcurrentCommitError, ConfigError, DatapoolError
from datapool_pipeline.storage import Storage

INITIAL_TAG = "initial-tag"
ROOT = "datapool"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Commit:
    seq: int
    tag: str
    run_id: str
    staging_id: str
    created_at: str
    samples_file: str
    processed_file: str
    n_samples: int
    n_processed: int
    datapool_size: int
    dataset_type: str
    embedding_model: str
    embedding_dim: int
    config: dict[str, Any] = field(default_factory=dict)
    adopted: int = 0
    format: int = FORMAT_VERSION


IDENTITY_KEY = f"{ROOT}/dataset.json"


class ForeignDatapoolError(ConfigError):
    """The output holds the datapool of another dataset (or of this dataset under another type)."""


def _commit_key(seq: int) -> str:
    return f"{ROOT}/commits/{seq:08d}.json"


class DatapoolState:
    """The committed datapool as of one head commit (tables are read lazily, once)."""

    def __init__(self, store: DatapoolStore, commits: list[Commit]) -> None:
        self.store = store
        self.commits = commits

    @property
    def head_seq(self) -> int:
        return self.commits[-1].seq if self.commits else 0

    @property
    def size(self) -> int:
        return self.commits[-1].datapool_size if self.commits else 0

    @property
    def tags(self) -> list[str]:
        return [c.tag for c in self.commits]

    @cached_property
    def samples(self) -> pl.DataFrame:
        dim = self.commits[-1].embedding_dim if self.commits else 0
        parts = [tables.from_parquet(self.store.storage.read_bytes(c.samples_file)) for c in self.commits]
        if not parts:
            return tables.empty(tables.sample_schema(max(dim, 1)))
        return pl.concat(parts, how="vertical")

    @cached_property
    def processed(self) -> pl.DataFrame:
        parts = [tables.from_parquet(self.store.storage.read_bytes(c.processed_file)) for c in self.commits]
        if not parts:
            return tables.empty(tables.PROCESSED_SCHEMA)
        return pl.concat(parts, how="vertical").unique(subset=["raw_key", "raw_version"], keep="last")

    def tag_samples(self, tag: str) -> pl.DataFrame:
        if tag == INITIAL_TAG:
            return self.samples
        for c in self.commits:
            if c.tag == tag:
                return tables.from_parquet(self.store.storage.read_bytes(c.samples_file))
        known = ", ".join([INITIAL_TAG, *reversed(self.tags)])
        raise DatapoolError(f"no tag named {tag!r}; tags are: {known}")


class DatapoolStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # ---- ownership -----------------------------------------------------------------------------

    def owner(self) -> dict[str, str] | None:
        """The dataset (name, type) this datapool belongs to, or None if no run has claimed it yet."""
        if not self.storage.exists(IDENTITY_KEY):
            return None
        try:
            body = json.loads(self.storage.read_bytes(IDENTITY_KEY))
            return {"name": str(body["name"]), "type": str(body["type"])}
        except (ValueError, KeyError, TypeError):
            raise DatapoolError(
                f"{self.storage.display(IDENTITY_KEY)} is damaged (expected JSON with name and type): restore it "
                "or delete it to let the next run claim this datapool again"
            ) from None

    def check_owner(self, name: str, dataset_type: str, *, claim: bool) -> None:
        """Refuse a datapool that belongs to another dataset or was built with another type.

        With `claim`, an unclaimed datapool is recorded as `name`'s (put-if-absent, so two datasets
        racing for one output cannot both win). A datapool written before ownership was recorded is
        claimed by the first dataset of the same type that runs on it."""
        found = self.owner()
        if found is None and claim:
            legacy = self.load_commits()
            if legacy and legacy[-1].dataset_type != dataset_type:
                found = {"name": "?", "type": legacy[-1].dataset_type}
            else:
                body = json.dumps({"name": name, "type": dataset_type}, sort_keys=True).encode()
                if not self.storage.put_if_absent(IDENTITY_KEY, body):
                    found = self.owner()
        if found is None:
            return
        where = self.storage.display()
        if found["name"] not in (name, "?"):
            raise ForeignDatapoolError(
                f"output {where} holds the datapool of dataset {found['name']!r} ({found['type']}), not of "
                f"{name!r}: give each dataset its own output"
            )
        if found["type"] != dataset_type:
            raise ForeignDatapoolError(
                f"dataset {name!r} is {dataset_type} in datasets.yaml but its datapool in {where} holds "
                f"{found['type']}: a dataset's type is fixed for its life; restore type: {found['type']} or "
                "use a new output"
            )

    # ---- commits -------------------------------------------------------------------------------

    def load_commits(self) -> list[Commit]:
        commits: list[Commit] = []
        for info in self.storage.list(f"{ROOT}/commits/"):
            if not info.key.endswith(".json"):
                continue
            raw = json.loads(self.storage.read_bytes(info.key))
            if raw.get("format", 1) > FORMAT_VERSION:
                raise DatapoolError(
                    f"{self.storage.display(info.key)} was written by a newer datapool_pipeline; upgrade"
                )
            commits.append(Commit(**raw))
        commits.sort(key=lambda c: c.seq)
        for expected, commit in enumerate(commits, start=1):
            if commit.seq != expected:
                raise DatapoolError(f"datapool commit chain is broken at {expected} in {self.storage.uri}")
        return commits

    def load_state(self) -> DatapoolState:
        return DatapoolState(self, self.load_commits())

    def commit(
        self,
        state: DatapoolState,
        *,
        tag: str,
        run_id: str,
        staging_id: str,
        samples: pl.DataFrame,
        processed: pl.DataFrame,
        dataset_type: str,
        embedding_model: str,
        embedding_dim: int,
        config: dict[str, Any],
        adopted: int = 0,
    ) -> Commit:
        """Write the tag's tables, then create the manifest; fails if another run committed first."""
        seq = state.head_seq + 1
        part = f"{seq:08d}-{tag}-{uuid.uuid4().hex[:8]}"
        samples_file = f"{ROOT}/samples/{part}.parquet"
        processed_file = f"{ROOT}/processed/{part}.parquet"
        self.storage.write_bytes(samples_file, tables.to_parquet(samples))
        self.storage.write_bytes(processed_file, tables.to_parquet(processed))
        commit = Commit(
            seq=seq,
            tag=tag,
            run_id=run_id,
            staging_id=staging_id,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            samples_file=samples_file,
            processed_file=processed_file,
            n_samples=samples.height,
            n_processed=processed.height,
            datapool_size=state.size + samples.height,
            dataset_type=dataset_type,
            embedding_model=embedding_model,
            embedding_dim=embedding_dim,
            config=config,
            adopted=adopted,
        )
        body = json.dumps(asdict(commit), indent=2, sort_keys=True).encode()
        if not self.storage.put_if_absent(_commit_key(seq), body):
            self.storage.delete(samples_file)
            self.storage.delete(processed_file)
            raise ConcurrentCommitError(
                f"another run committed tag #{seq} to {self.storage.uri} first; nothing was committed "
                "by this run: start a new run to select against the updated datapool"
            )
        return commit

    def remove_unreferenced_parts(self, commits: list[Commit]) -> int:
        """Delete table parts left by commits that lost a race or crashed before their manifest."""
        referenced = {c.samples_file for c in commits} | {c.processed_file for c in commits}
        removed = 0
        for folder in ("samples", "processed"):
            for info in list(self.storage.list(f"{ROOT}/{folder}/")):
                if info.key not in referenced:
                    self.storage.delete(info.key)
                    removed += 1
        return removed

    # ---- shard registry and per-shard caches ---------------------------------------------------

    def read_registry(self) -> pl.DataFrame:
        parts = [
            tables.from_parquet(self.storage.read_bytes(i.key))
            for i in self.storage.list(f"{ROOT}/shards/registry/")
            if i.key.endswith(".parquet")
        ]
        if not parts:
            return tables.empty(tables.REGISTRY_SCHEMA)
        return pl.concat(parts, how="vertical").unique(subset=["shard_id", "raw_key", "raw_version"])

    def append_registry(self, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        key = f"{ROOT}/shards/registry/{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        self.storage.write_bytes(key, tables.to_parquet(rows.select(list(tables.REGISTRY_SCHEMA))))

    def shard_members(self, shard_ids: list[str]) -> pl.DataFrame:
        registry = self.read_registry()
        return registry.filter(pl.col("shard_id").is_in(shard_ids))

    def write_shard_frames(self, shard_id: str, files: pl.DataFrame, frames: pl.DataFrame) -> None:
        self.storage.write_bytes(f"{ROOT}/shards/{shard_id}/frames.parquet", tables.to_parquet(frames))
        # files.parquet last: its presence marks the shard's frame manifest as complete.
        self.storage.write_bytes(f"{ROOT}/shards/{shard_id}/files.parquet", tables.to_parquet(files))

    def read_shard_files(self, shard_id: str) -> pl.DataFrame | None:
        key = f"{ROOT}/shards/{shard_id}/files.parquet"
        if not self.storage.exists(key):
            return None
        return tables.from_parquet(self.storage.read_bytes(key))

    def read_shard_frames(self, shard_id: str) -> pl.DataFrame:
        return tables.from_parquet(self.storage.read_bytes(f"{ROOT}/shards/{shard_id}/frames.parquet"))

    def embeddings_key(self, shard_id: str, model_fingerprint: str) -> str:
        return f"{ROOT}/shards/{shard_id}/embeddings/{model_fingerprint}.parquet"

    def write_shard_embeddings(self, shard_id: str, model_fingerprint: str, df: pl.DataFrame) -> None:
        self.storage.write_bytes(self.embeddings_key(shard_id, model_fingerprint), tables.to_parquet(df))

    def read_shard_embeddings(self, shard_id: str, model_fingerprint: str) -> pl.DataFrame | None:
        key = self.embeddings_key(shard_id, model_fingerprint)
        if not self.storage.exists(key):
            return None
        return tables.from_parquet(self.storage.read_bytes(key))

    # ---- staging (selected, not yet committed) -------------------------------------------------

    def write_staging(
        self, staging_id: str, meta: dict[str, Any], picks: pl.DataFrame, processed: pl.DataFrame
    ) -> None:
        base = f"{ROOT}/staging/{staging_id}"
        self.storage.write_bytes(f"{base}.parquet", tables.to_parquet(picks))
        self.storage.write_bytes(f"{base}.processed.parquet", tables.to_parquet(processed))
        # The .json is written last: a staging entry without it is incomplete and ignored.
        self.storage.write_bytes(f"{base}.json", json.dumps(meta, indent=2).encode())

    def read_staging(self, staging_id: str) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame] | None:
        base = f"{ROOT}/staging/{staging_id}"
        if not self.storage.exists(f"{base}.json"):
            return None
        meta = json.loads(self.storage.read_bytes(f"{base}.json"))
        picks = tables.from_parquet(self.storage.read_bytes(f"{base}.parquet"))
        processed = tables.from_parquet(self.storage.read_bytes(f"{base}.processed.parquet"))
        return meta, picks, processed

    def staging_ids(self) -> list[str]:
        return sorted(
            i.key.rsplit("/", 1)[-1].removesuffix(".json")
            for i in self.storage.list(f"{ROOT}/staging/")
            if i.key.endswith(".json")
        )

    def discard_committed_staging(self, commits: list[Commit]) -> list[str]:
        """Delete staging entries whose commit landed (a crash after the commit skipped this);
        always safe: a committed selection is never read from staging again."""
        committed = {c.staging_id for c in commits}
        done = [sid for sid in self.staging_ids() if sid in committed]
        for sid in done:
            self.delete_staging(sid)
        return done

    def delete_staging(self, staging_id: str) -> None:
        base = f"{ROOT}/staging/{staging_id}"
        self.storage.delete(f"{base}.json")
        self.storage.delete(f"{base}.parquet")
        self.storage.delete(f"{base}.processed.parquet")

    # ---- reports -------------------------------------------------------------------------------

    @staticmethod
    def report_prefix(tag: str) -> str:
        return f"{ROOT}/reports/{tag}"
