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

Every load validates the chain (each manifest parses and has the Commit fields with their types, is
named after its seq, seqs run 1..n, each part and tag appears once, datapool_size is the running sum)
and every read of a table part checks it (present, parses, the recorded row count and sha256): damage
raises DamagedStateError naming the object, never a parser's traceback. `datapool check`
(datapool/check.py) verifies the whole state and repairs what is safe to repair.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import polars as pl

from datapool_pipeline.datapool import tables
from datapool_pipeline.errors import ConcurrentCommitError, ConfigError, DamagedStateError, DatapoolError
from datapool_pipeline.storage import Storage
from datapool_pipeline.storage.base import is_safe_key

INITIAL_TAG = "initial-tag"
LATEST_TAG = "latest"
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
    # sha256 of each part's bytes; "" in manifests written before checksums were recorded.
    samples_sha256: str = ""
    processed_sha256: str = ""


_COMMIT_FIELDS = {f.name: f for f in Commit.__dataclass_fields__.values()}
_FIELD_TYPES = {"int": int, "str": str, "dict[str, Any]": dict}
_MANIFEST_NAME = re.compile(r"^(\d{8})\.json$")
# Leftovers (temp files of interrupted writes, unreferenced parts and frames) younger than this may
# belong to a write in progress: run-start clean-up and `check --repair` leave them alone.
LEFTOVER_MIN_AGE_S = 600.0
CHECK_HINT = "`datapool check DATASET` lists the damage and what to repair"


IDENTITY_KEY = f"{ROOT}/dataset.json"


class UnknownTagError(ConfigError):
    """A tag name that the datapool does not hold (a usage error: exit 2)."""


class ForeignDatapoolError(ConfigError):
    """The output holds the datapool of another dataset (or of this dataset under another type)."""


def _commit_key(seq: int) -> str:
    return f"{ROOT}/commits/{seq:08d}.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_manifest(key: str, data: bytes) -> Commit:
    """A commit manifest's Commit, or a one-line reason (ValueError) why it is not one."""
    match = _MANIFEST_NAME.match(key.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError("is not named <seq>.json (8 digits): not a commit manifest")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ValueError("is not a JSON object")
    if isinstance(raw.get("format"), int) and raw["format"] > FORMAT_VERSION:
        raise _NewerFormat()
    missing = [name for name, f in _COMMIT_FIELDS.items() if name not in raw and _required(f)]
    if missing:
        raise ValueError(f"lacks the field(s) {', '.join(missing)}")
    for name, value in raw.items():
        f = _COMMIT_FIELDS.get(name)
        expected = _FIELD_TYPES.get(str(f.type)) if f is not None else None
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise ValueError(f"field {name} is {type(value).__name__}, expected {expected.__name__}")
    commit = Commit(**{k: v for k, v in raw.items() if k in _COMMIT_FIELDS})
    if commit.seq != int(match.group(1)):
        raise ValueError(f"holds seq {commit.seq} but is named {match.group(0)} (a copied manifest?)")
    for name, folder in (("samples_file", "samples"), ("processed_file", "processed")):
        value = getattr(commit, name)
        if not value.startswith(f"{ROOT}/{folder}/") or not is_safe_key(value):
            raise ValueError(f"field {name} {value!r} is not a part under {ROOT}/{folder}/")
    if min(commit.n_samples, commit.n_processed, commit.datapool_size, commit.adopted) < 0:
        raise ValueError("holds a negative count")
    return commit


def _required(f: Any) -> bool:
    from dataclasses import MISSING

    return f.default is MISSING and f.default_factory is MISSING


class _NewerFormat(ValueError):
    pass


def chain_problems(commits: list[Commit]) -> list[tuple[Commit, str, str]]:
    """What is wrong with a chain of parsed manifests (sorted by seq): (the commit it is found at, a
    code: gap, part, tag or size, a one-line reason). A gap is reported at the commit after it, with a
    reason about the first missing manifest."""
    problems: list[tuple[Commit, str, str]] = []
    files: dict[str, Commit] = {}
    tags: dict[str, Commit] = {}
    size = 0
    expected = 1
    for commit in commits:
        if commit.seq != expected:
            missing = f" (and the {commit.seq - expected - 1} after it)" if commit.seq - expected > 1 else ""
            problems.append(
                (commit, "gap", f"is missing{missing}: the chain jumps from #{expected - 1} to #{commit.seq}")
            )
            size = commit.datapool_size - commit.n_samples  # what the missing tags held is unknown
        expected = commit.seq + 1
        for part in (commit.samples_file, commit.processed_file):
            if part in files:
                problems.append(
                    (
                        commit,
                        "part",
                        f"names {part}, already a part of tag {files[part].tag} "
                        f"(#{files[part].seq}): a copied manifest?",
                    )
                )
            files.setdefault(part, commit)
        if commit.tag in tags:
            problems.append((commit, "tag", f"repeats tag {commit.tag} of #{tags[commit.tag].seq}"))
        tags.setdefault(commit.tag, commit)
        size += commit.n_samples
        if commit.datapool_size != size:
            problems.append(
                (
                    commit,
                    "size",
                    f"records datapool_size {commit.datapool_size} but the tags up to it hold {size} samples",
                )
            )
            size = commit.datapool_size
    return problems


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
        parts = [self.store.read_samples(c) for c in self.commits]
        if not parts:
            return tables.empty(tables.sample_schema(max(dim, 1)))
        return pl.concat(parts, how="vertical")

    @cached_property
    def processed(self) -> pl.DataFrame:
        parts = [self.store.read_processed(c) for c in self.commits]
        if not parts:
            return tables.empty(tables.PROCESSED_SCHEMA)
        return pl.concat(parts, how="vertical").unique(subset=["raw_key", "raw_version"], keep="last")

    def tag_samples(self, tag: str) -> pl.DataFrame:
        if tag == INITIAL_TAG:
            return self.samples
        return self.store.read_samples(self.commit_of(tag))

    def commit_of(self, tag: str) -> Commit:
        """The commit of a tag name, or of the newest tag for `latest`."""
        if tag == LATEST_TAG and self.commits:
            return self.commits[-1]
        for c in self.commits:
            if c.tag == tag:
                return c
        known = ", ".join([*reversed(self.tags), INITIAL_TAG]) or "none yet"
        raise UnknownTagError(f"no tag named {tag!r}; tags are: {known} (and {LATEST_TAG} for the newest)")


class DatapoolStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # ---- ownership -----------------------------------------------------------------------------

    def owner(self) -> dict[str, str] | None:
        """The dataset (name, type) this datapool belongs to, or None if no run has claimed it yet."""
        try:
            raw = self.storage.read_bytes(IDENTITY_KEY)  # one request, not a stat and a read (every sensor tick)
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
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

    def damaged(self, key: str, what: str) -> DamagedStateError:
        """The one-line error for damaged state: the object's location, what is wrong, what to do."""
        error = DamagedStateError(f"damaged datapool: {self.storage.display(key)} {what}; {CHECK_HINT}")
        error.key, error.what = key, what  # type: ignore[attr-defined]
        return error

    def read_manifest(self, key: str) -> Commit:
        """One commit manifest, parsed and validated on its own (DamagedStateError if it is not one)."""
        try:
            return parse_manifest(key, self.storage.read_bytes(key))
        except FileNotFoundError:
            raise self.damaged(key, "disappeared while the chain was read") from None
        except _NewerFormat:
            raise DatapoolError(
                f"{self.storage.display(key)} was written by a newer datapool_pipeline; upgrade"
            ) from None
        except ValueError as exc:
            raise self.damaged(key, str(exc)) from None

    def load_commits(self) -> list[Commit]:
        """The validated chain of commits (DamagedStateError naming the first damaged manifest)."""
        commits = [
            self.read_manifest(info.key) for info in self.storage.list(f"{ROOT}/commits/") if info.key.endswith(".json")
        ]
        commits.sort(key=lambda c: c.seq)
        for commit, code, problem in chain_problems(commits)[:1]:
            if code == "gap":
                previous = max([c.seq for c in commits if c.seq < commit.seq], default=0)
                raise self.damaged(_commit_key(previous + 1), problem)
            raise self.damaged(_commit_key(commit.seq), problem)
        return commits

    def read_samples(self, commit: Commit) -> pl.DataFrame:
        return self._read_part(
            commit,
            commit.samples_file,
            commit.samples_sha256,
            commit.n_samples,
            tables.sample_schema(max(commit.embedding_dim, 1)),
        )

    def read_processed(self, commit: Commit) -> pl.DataFrame:
        return self._read_part(
            commit, commit.processed_file, commit.processed_sha256, commit.n_processed, tables.PROCESSED_SCHEMA
        )

    def _read_part(
        self, commit: Commit, key: str, digest: str, rows: int, schema: dict[str, pl.DataType]
    ) -> pl.DataFrame:
        """A table part of a commit, checked against its manifest (DamagedStateError naming it)."""
        whose = f"(a part of tag {commit.tag}, #{commit.seq})"
        try:
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise self.damaged(key, f"is missing {whose}") from None
        if digest and sha256(data) != digest:
            raise self.damaged(key, f"does not match the sha256 its manifest records {whose}: truncated or changed")
        try:
            df = tables.from_parquet(data)
        except Exception:  # noqa: BLE001 - any parser error means the same: not the part that was written
            raise self.damaged(key, f"is not a readable Parquet file ({len(data)} bytes) {whose}: truncated?") from None
        if df.height != rows:
            raise self.damaged(key, f"holds {df.height} rows but its manifest records {rows} {whose}")
        missing = [c for c in schema if c not in df.columns]
        if missing:
            raise self.damaged(key, f"lacks the column(s) {', '.join(missing)} {whose}")
        if "embedding" in schema and df.schema["embedding"] != schema["embedding"] and rows:
            raise self.damaged(key, f"holds embeddings of another size than {commit.embedding_dim} {whose}")
        if "sample_id" in schema and rows and df["tag"].ne(commit.tag).any():
            raise self.damaged(key, f"holds samples of another tag than {commit.tag} {whose}")
        return df

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
        samples_bytes, processed_bytes = tables.to_parquet(samples), tables.to_parquet(processed)
        self.storage.write_bytes(samples_file, samples_bytes)
        self.storage.write_bytes(processed_file, processed_bytes)
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
            samples_sha256=sha256(samples_bytes),
            processed_sha256=sha256(processed_bytes),
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

    def remove_stale_temp_files(self, min_age_s: float = LEFTOVER_MIN_AGE_S) -> int:
        """Delete the `.tmp-*` files interrupted atomic writes left in a local output (object stores
        have none) that are older than `min_age_s`: a write in progress is never that old."""
        temp_files = getattr(self.storage, "temp_files", None)
        if temp_files is None:
            return 0
        cutoff = time.time() - min_age_s
        removed = 0
        for info in list(temp_files()):
            if info.mtime < cutoff:
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
