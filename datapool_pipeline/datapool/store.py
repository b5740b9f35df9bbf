"""Datapool state in the output datasource: immutable Parquet parts plus a chain of commit manifests.

Layout (under the output datasource):

    frames/<raw key>/<version hash>-<frame>.png      selected video frames (full resolution)
    datapool/commits/<seq>.json                      one manifest per tag, created with put-if-absent
    datapool/checkpoints/<seq>.json                  every K commits: a JSON header line (parts, checksums),
                                                     then the commits 1..seq as one JSON list
    datapool/compacted/<seq>-<id>-processed|registry.parquet   a checkpoint's compacted tables
    datapool/samples/<seq>-<tag>-<id>.parquet        the samples (with embeddings) of one tag
    datapool/processed/<seq>-<tag>-<id>.parquet      the raw files that run processed
    datapool/shards/registry/<time>-<id>.parquet     which raw files make up which shard
    datapool/shards/<shard>/files.parquet            decode status per raw file of the shard
    datapool/shards/<shard>/embeddings/<model>.parquet   per model: frame manifest (index, timestamp,
                                                     statistics) with the cached embeddings
    (datapool/shards/<shard>/frames.parquet: written by older versions, never read; safe to delete)
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

Checkpoints keep state reads bounded as history grows: every CHECKPOINT_EVERY commits the committing
run writes the commit list and the compacted processed and registry tables up to its seq (parts
first, then the checkpoint JSON with put-if-absent, like a manifest). Loading reads the newest valid
checkpoint, the manifests listed after it (`list(start_after=...)`) and the parts of those commits
only. A checkpoint is derived data, never the only copy: the manifests and parts stay. One that does
not verify (JSON, its own checksum, its parts' sha256 and row counts, its last commit equal to that
seq's manifest) is skipped and loading falls back to the previous checkpoint, then to the whole
chain; `datapool check` reports it as damaged and `--repair` deletes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
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
# A checkpoint every this many commits (counted from the newest checkpoint, so a checkpoint that a
# crash skipped is written by the next commit). A run start reads at most 3 * CHECKPOINT_EVERY + 2
# objects (per commit after the checkpoint: its manifest, its processed part, a registry part; 17 at
# 5); each checkpoint rewrites the compacted processed and registry tables (benchmarks/bench_state.py).
CHECKPOINT_EVERY = 5
# Checkpoints kept (older ones are deleted by the run that writes a newer one).
CHECKPOINTS_KEPT = 2
# Registry parts are named after the writer's clock (<UTC time>-<id>): a checkpoint's compacted
# registry holds every part up to this long before the newest part it saw, and names the parts after
# that point it holds; loading lists the registry from there. A registry write that took longer than
# this, or writers' clocks further apart, would be missed (LEFTOVER_MIN_AGE_S makes the same bet).
REGISTRY_WINDOW_S = 3600.0
# How long a store reuses its listing of checkpoints/ (see DatapoolStore.checkpoint_keys).
CHECKPOINT_LISTING_TTL_S = 30.0
CHECKPOINT_FORMAT = 1


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
    # What the selection did per strategy (selection/record.py); {} in manifests and checkpoints
    # written before it was recorded (the report then says "not recorded").
    selection: dict[str, Any] = field(default_factory=dict)


_COMMIT_FIELDS = {f.name: f for f in Commit.__dataclass_fields__.values()}
# Fields added after checkpoints existed: a checkpoint's commit may lack them (then their default).
_LATER_FIELDS = {"selection": dict}
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


CHECKPOINTS = f"{ROOT}/checkpoints/"
COMPACTED = f"{ROOT}/compacted/"
REGISTRY = f"{ROOT}/shards/registry/"
_CHECKPOINT_NAME = re.compile(r"^(\d{8})\.json$")
_STAMP = "%Y%m%dT%H%M%S"


def checkpoint_key(seq: int) -> str:
    return f"{CHECKPOINTS}{seq:08d}.json"


@dataclass(frozen=True)
class TablePart:
    key: str
    rows: int
    sha256: str


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The commits 1..seq and the compacted processed and registry tables as of commit seq."""

    key: str
    seq: int
    commits: list[Commit]
    processed: TablePart
    registry: TablePart
    registry_after: str  # every registry part up to this key (inclusive) is in the compacted registry
    registry_covered: frozenset[str]  # and these parts after it

    @cached_property
    def tags_and_parts(self) -> tuple[dict[str, Commit], dict[str, Commit]]:
        """Its commits by tag and by part (what the commits after it must not repeat)."""
        tags = {c.tag: c for c in self.commits}
        files = {p: c for c in self.commits for p in (c.samples_file, c.processed_file)}
        return tags, files


def parse_checkpoint(key: str, data: bytes) -> Checkpoint:
    """A checkpoint, or a one-line reason (ValueError) why it is not one."""
    match = _CHECKPOINT_NAME.match(key.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError("is not named <seq>.json (8 digits): not a checkpoint")
    head, _, body = data.partition(b"\n")
    try:
        raw, commits = json.loads(head), json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("is not valid JSON (a header line, then the commits)") from None
    try:
        if raw.get("format", 0) > CHECKPOINT_FORMAT:
            raise ValueError("was written by a newer datapool_pipeline (upgrade)")
        seq = int(raw["seq"])
        if sha256(body) != raw["commits_sha256"] or not isinstance(commits, list):
            raise ValueError("does not match the sha256 it records for its commits: changed or truncated")
        # The commits were validated manifests when the checkpoint was written, and its checksum
        # matches: build them without validating each field again (this loop is the cost of a load).
        parsed = []
        for c in commits:
            if c.keys() != _COMMIT_FIELDS.keys():
                if c.keys() | _LATER_FIELDS.keys() != _COMMIT_FIELDS.keys():
                    raise ValueError(f"holds a commit with the fields {sorted(c)}")
                c = {**{name: make() for name, make in _LATER_FIELDS.items()}, **c}  # written before them
            commit = object.__new__(Commit)
            commit.__dict__.update(c)
            parsed.append(commit)
        parts = {}
        for name in ("processed", "registry"):
            part = TablePart(str(raw[name]["key"]), int(raw[name]["rows"]), str(raw[name]["sha256"]))
            if not part.key.startswith(COMPACTED) or not is_safe_key(part.key):
                raise ValueError(f"names {part.key!r}, not a part under {COMPACTED}")
            parts[name] = part
        after = str(raw["registry"]["after"])
        covered = frozenset(str(k) for k in raw["registry"]["covered"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"is not a checkpoint (bad or missing {exc})") from None
    if not parsed or [c.seq for c in parsed[:1]] + [parsed[-1].seq] != [1, len(parsed)]:
        raise ValueError("does not hold the commits 1..seq")
    if seq != int(match.group(1)) or not parsed or parsed[-1].seq != seq:
        raise ValueError(f"holds commits up to #{parsed[-1].seq if parsed else 0} but is named {match.group(0)}")
    return Checkpoint(key, seq, parsed, parts["processed"], parts["registry"], after, covered)


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


def chain_problems(
    commits: list[Commit], *, tags: dict[str, Commit] | None = None, files: dict[str, Commit] | None = None
) -> list[tuple[Commit, str, str]]:
    """What is wrong with a chain of parsed manifests (sorted by seq): (the commit it is found at, a
    code: gap, part, tag or size, a one-line reason). A gap is reported at the commit after it, with a
    reason about the first missing manifest. With `tags` and `files` (of the sound chain before
    `commits`, whose first commit is then its last), only what follows is checked."""
    problems: list[tuple[Commit, str, str]] = []
    files = dict(files or {})
    tags = dict(tags or {})
    size = 0
    expected = 1
    if commits and tags:
        first = commits[0]
        expected, size = first.seq + 1, first.datapool_size
        commits = commits[1:]
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

    def __init__(self, store: DatapoolStore, commits: list[Commit], checkpoint: Checkpoint | None = None) -> None:
        self.store = store
        self.commits = commits
        self.checkpoint = checkpoint  # the checkpoint this state was loaded from (None: the whole chain)

    @property
    def checkpoint_seq(self) -> int:
        return self.checkpoint.seq if self.checkpoint else 0

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
        parts: list[pl.DataFrame] | None = None
        if self.checkpoint is not None:
            try:
                base = self.store.read_checkpoint_part(self.checkpoint, "processed")
            except DamagedStateError:
                base = None  # fall back to every commit's part
            if base is not None:
                parts = [base, *(self.store.read_processed(c) for c in self.commits[self.checkpoint.seq :])]
        if parts is None:
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
        self._checkpoints: dict[str, Checkpoint] = {}  # parsed checkpoint JSONs (immutable once written)
        self._skipped: dict[str, str] = {}
        self.checkpoint_error: str | None = None  # why the last commit's checkpoint was not written
        self._listed: tuple[float, list[tuple[int, str]]] | None = None  # (when, checkpoint_keys())

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
        return self.load_state().commits

    def load_all_manifests(self) -> list[Commit]:
        """The chain read from every manifest, ignoring checkpoints (what loading did before them)."""
        commits = [
            self.read_manifest(info.key) for info in self.storage.list(f"{ROOT}/commits/") if info.key.endswith(".json")
        ]
        commits.sort(key=lambda c: c.seq)
        self._raise_chain_problems(commits)
        return commits

    def _raise_chain_problems(self, commits: list[Commit]) -> None:
        for commit, code, problem in chain_problems(commits)[:1]:
            if code == "gap":
                previous = max([c.seq for c in commits if c.seq < commit.seq], default=0)
                raise self.damaged(_commit_key(previous + 1), problem)
            raise self.damaged(_commit_key(commit.seq), problem)

    # ---- checkpoints ---------------------------------------------------------------------------

    def checkpoint_keys(self, fresh: bool = False) -> list[tuple[int, str]]:
        """(seq, key) of the checkpoint JSONs, newest first (a handful: older ones are pruned).

        Unless `fresh`, a listing younger than CHECKPOINT_LISTING_TTL_S is reused (run start and a
        sensor tick load the state and the registry: one listing, not two). A stale listing is never
        wrong, only slower: a load checks the checkpoint against the manifest of its seq and lists the
        manifests after it afresh, and skips a checkpoint that disappeared."""
        if not fresh and self._listed is not None and time.monotonic() - self._listed[0] < CHECKPOINT_LISTING_TTL_S:
            return self._listed[1]
        found = []
        for info in self.storage.list(CHECKPOINTS):
            match = _CHECKPOINT_NAME.match(info.key[len(CHECKPOINTS) :])
            if match is not None:
                found.append((int(match.group(1)), info.key))
        self._listed = (time.monotonic(), sorted(found, reverse=True))
        return self._listed[1]

    def read_checkpoint(self, key: str) -> Checkpoint:
        """A checkpoint JSON, parsed and verified on its own (ValueError with a one-line reason)."""
        cached = self._checkpoints.get(key)
        if cached is not None:
            return cached
        try:
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise ValueError("disappeared while it was read") from None
        checkpoint = parse_checkpoint(key, data)
        self._checkpoints[key] = checkpoint
        return checkpoint

    def read_checkpoint_part(self, checkpoint: Checkpoint, name: str) -> pl.DataFrame:
        part: TablePart = getattr(checkpoint, name)
        schema = tables.PROCESSED_SCHEMA if name == "processed" else tables.REGISTRY_SCHEMA
        whose = f"(the compacted {name} table of checkpoint #{checkpoint.seq})"
        try:
            data = self.storage.read_bytes(part.key)
        except FileNotFoundError:
            raise self.damaged(part.key, f"is missing {whose}") from None
        if sha256(data) != part.sha256:
            raise self.damaged(part.key, f"does not match the sha256 its checkpoint records {whose}")
        try:
            df = tables.from_parquet(data)
        except Exception:  # noqa: BLE001 - any parser error: not the part that was written
            raise self.damaged(part.key, f"is not a readable Parquet file {whose}") from None
        if df.height != part.rows or any(c not in df.columns for c in schema):
            raise self.damaged(part.key, f"does not hold the rows and columns its checkpoint records {whose}")
        return df

    def _state_from(self, checkpoint: Checkpoint) -> DatapoolState:
        """The state from a checkpoint plus the manifests after it; ValueError if the checkpoint does
        not agree with the manifest of its own seq (dropped or replaced since), DamagedStateError for
        damage after the checkpoint (as loading without checkpoints reports it)."""
        newer = [
            self.read_manifest(info.key)
            for info in self.storage.list(f"{ROOT}/commits/", start_after=_commit_key(checkpoint.seq - 1))
            if info.key.endswith(".json")
        ]
        newer.sort(key=lambda c: c.seq)
        if not newer or newer[0].seq != checkpoint.seq:
            # Manifests are deleted only by `check --repair`, which deletes the checkpoints holding them first.
            raise self.damaged(
                _commit_key(checkpoint.seq),
                f"is missing, but checkpoint {self.storage.display(checkpoint.key)} holds its commit (tag "
                f"{checkpoint.commits[-1].tag}): a deleted manifest? `datapool check --repair` restores it",
            )
        if newer[0] != checkpoint.commits[-1]:
            raise ValueError(f"does not match commit manifest #{checkpoint.seq} (dropped or replaced since?)")
        # The chain up to the checkpoint was validated when it was written; check what follows it
        # (seqs, parts and tags once, sizes adding up) on the checkpoint's last commit and its sets.
        tags, files = checkpoint.tags_and_parts
        problems = chain_problems(newer, tags=tags, files=files)
        for commit, code, problem in problems[:1]:
            if code == "gap":
                previous = max([c.seq for c in newer if c.seq < commit.seq])
                raise self.damaged(_commit_key(previous + 1), problem)
            raise self.damaged(_commit_key(commit.seq), problem)
        return DatapoolState(self, [*checkpoint.commits, *newer[1:]], checkpoint)

    def checkpoint_problems(self) -> list[tuple[str, str]]:
        """(key, reason) of the checkpoints a load skipped since this store was made."""
        return list(self._skipped.items())

    def load_state(self) -> DatapoolState:
        """The committed state: from the newest checkpoint that verifies plus the manifests after it,
        else from the whole chain of manifests."""
        for _, key in self.checkpoint_keys():
            try:
                return self._state_from(self.read_checkpoint(key))
            except ValueError as exc:
                self._skipped[key] = str(exc)
        return DatapoolState(self, self.load_all_manifests())

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
        selection: dict[str, Any] | None = None,
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
            selection=selection or {},
        )
        body = json.dumps(asdict(commit), indent=2, sort_keys=True).encode()
        if not self.storage.put_if_absent(_commit_key(seq), body):
            self.storage.delete(samples_file)
            self.storage.delete(processed_file)
            raise ConcurrentCommitError(
                f"another run committed tag #{seq} to {self.storage.uri} first; nothing was committed "
                "by this run: start a new run to select against the updated datapool"
            )
        self.checkpoint_error = None
        if seq - state.checkpoint_seq >= CHECKPOINT_EVERY:
            # An optimisation on committed state: a failure must not turn the committed tag into an
            # error (the next commit tries again; loading reads the manifests meanwhile).
            try:
                after = DatapoolState(self, [*state.commits, commit], state.checkpoint)
                if "processed" in state.__dict__:  # already read: add this commit's part to it
                    after.__dict__["processed"] = pl.concat(
                        [state.processed, tables.from_parquet(processed_bytes)], how="vertical"
                    ).unique(subset=["raw_key", "raw_version"], keep="last")
                self.write_checkpoint(after)
            except Exception as exc:  # noqa: BLE001
                self.checkpoint_error = f"{type(exc).__name__}: {exc}"
        return commit

    def write_checkpoint(self, state: DatapoolState) -> Checkpoint | None:
        """Write the checkpoint of `state`'s head commit: the compacted tables first, then the JSON
        (put-if-absent, so a crash leaves only unreferenced parts and the previous checkpoints), then
        prune older checkpoints. None if one exists already for that seq."""
        from datapool_pipeline.workflow.faults import fault_point

        seq = state.head_seq
        base = state.checkpoint
        processed = state.processed
        registry, read = self._registry(base)
        if base is not None and base.key in self._skipped:
            base = None  # its compacted registry was unusable: `read` lists every part
        listed = sorted({*read, *(base.registry_covered if base else ())})
        newest = max([*listed, base.registry_after if base else ""])
        after = base.registry_after if base else ""
        try:
            stamp = datetime.strptime(newest[len(REGISTRY) :].split("-", 1)[0], _STAMP)
            after = max(after, f"{REGISTRY}{(stamp - timedelta(seconds=REGISTRY_WINDOW_S)).strftime(_STAMP)}")
        except ValueError:
            pass  # no registry part, or a key not named by append_registry: keep the previous window
        covered = [k for k in listed if k > after]
        stem = f"{COMPACTED}{seq:08d}-{uuid.uuid4().hex[:8]}"
        parts = {}
        for name, df in (("processed", processed), ("registry", registry)):
            data = tables.to_parquet(df)
            key = f"{stem}-{name}.parquet"
            self.storage.write_bytes(key, data)
            parts[name] = {"key": key, "rows": df.height, "sha256": sha256(data)}
            fault_point("mid_checkpoint")
        commits = json.dumps([asdict(c) for c in state.commits], separators=(",", ":")).encode()
        header = {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commits_sha256": sha256(commits),
            "processed": parts["processed"],
            "registry": {**parts["registry"], "after": after, "covered": covered},
        }
        data = json.dumps(header, sort_keys=True).encode() + b"\n" + commits
        if not self.storage.put_if_absent(checkpoint_key(seq), data):
            for part in parts.values():
                self.storage.delete(part["key"])
            return None
        checkpoint = parse_checkpoint(checkpoint_key(seq), data)
        self._checkpoints[checkpoint.key] = checkpoint
        self.prune_checkpoints()  # lists afresh: the next load of this store finds the new checkpoint
        return checkpoint

    def prune_checkpoints(self, keep: int | None = None, min_age_s: float = LEFTOVER_MIN_AGE_S) -> int:
        """Delete all but the `keep` newest checkpoints, and compacted parts that no kept checkpoint
        names: those of deleted checkpoints, and those older than `min_age_s` of crashed writes."""
        keep = CHECKPOINTS_KEPT if keep is None else keep
        found = self.checkpoint_keys(fresh=True)
        removed = 0
        for _, key in found[keep:]:
            self.storage.delete(key)
            self._checkpoints.pop(key, None)
            removed += 1
        kept = found[:keep]
        oldest = kept[-1][0] if kept else 0
        referenced = set()
        for _, key in kept:
            try:
                checkpoint = self.read_checkpoint(key)
            except ValueError:
                continue
            referenced |= {checkpoint.processed.key, checkpoint.registry.key}
        cutoff = time.time() - min_age_s
        for info in list(self.storage.list(COMPACTED)):
            if info.key in referenced:
                continue
            name = info.key[len(COMPACTED) :]
            part_seq = int(name[:8]) if name[:8].isdigit() else oldest
            if part_seq < oldest or info.mtime < cutoff:
                self.storage.delete(info.key)
                removed += 1
        return removed

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
        return self._registry()[0]

    def _newest_checkpoint(self) -> Checkpoint | None:
        for _, key in self.checkpoint_keys():
            try:
                return self.read_checkpoint(key)
            except ValueError as exc:
                self._skipped[key] = str(exc)
        return None

    def _registry(self, checkpoint: Checkpoint | None = None) -> tuple[pl.DataFrame, list[str]]:
        """The registry (one row per shard member) and the keys of the parts read beyond the
        checkpoint's compacted registry (all parts without a usable checkpoint)."""
        checkpoint = checkpoint or self._newest_checkpoint()
        parts: list[pl.DataFrame] = []
        after, covered = "", frozenset[str]()
        if checkpoint is not None:
            try:
                parts.append(self.read_checkpoint_part(checkpoint, "registry"))
                after, covered = checkpoint.registry_after, checkpoint.registry_covered
            except DamagedStateError as exc:
                self._skipped[checkpoint.key] = f"its compacted registry {exc}"
        keys = [
            i.key
            for i in self.storage.list(REGISTRY, start_after=after)
            if i.key.endswith(".parquet") and i.key not in covered
        ]
        parts += [tables.from_parquet(self.storage.read_bytes(k)) for k in keys]
        if not parts:
            return tables.empty(tables.REGISTRY_SCHEMA), keys
        registry = pl.concat([p.select(list(tables.REGISTRY_SCHEMA)) for p in parts], how="vertical")
        return registry.unique(subset=["shard_id", "raw_key", "raw_version"], maintain_order=True), keys

    def append_registry(self, rows: pl.DataFrame, now: datetime | None = None) -> None:
        if rows.height == 0:
            return
        stamp = (now or datetime.now(timezone.utc)).strftime(_STAMP)
        key = f"{REGISTRY}{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        self.storage.write_bytes(key, tables.to_parquet(rows.select(list(tables.REGISTRY_SCHEMA))))

    def shard_members(self, shard_ids: list[str]) -> pl.DataFrame:
        registry = self.read_registry()
        return registry.filter(pl.col("shard_id").is_in(shard_ids))

    def write_shard_files(self, shard_id: str, files: pl.DataFrame) -> None:
        """The shard's per-file decode status; written before any of its embeddings (workflow/embeddings.py)."""
        self.storage.write_bytes(f"{ROOT}/shards/{shard_id}/files.parquet", tables.to_parquet(files))

    def read_shard_files(self, shard_id: str) -> pl.DataFrame | None:
        key = f"{ROOT}/shards/{shard_id}/files.parquet"
        if not self.storage.exists(key):
            return None
        return tables.from_parquet(self.storage.read_bytes(key))

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
