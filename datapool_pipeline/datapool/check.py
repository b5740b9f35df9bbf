"""`datapool check`: verify a dataset's whole datapool state, and repair what is safe to repair.

Verified: the owner record (dataset.json); every commit manifest (parses, has the Commit fields with
their types, is named after its seq) and the chain (seqs 1..n, each part and tag once, datapool_size
adds up); every table part (present, the recorded sha256 and row count, parses, its columns and tag);
each sample once in the datapool; for videos, each sample's frame file in the output; the hnswlib
index (a cache: a stale one is only reported); each checkpoint (its JSON and checksum, its commits
equal to the manifests, its compacted parts' sha256 and row counts, its processed table equal to
the union of the commits' processed parts); leftovers: temp files of interrupted writes (local
outputs), table parts and frame files nothing references, staging entries.

`repair` only does safe things: it drops a damaged LAST commit (deletes its manifest, so the chain
ends at the previous sound commit, plus its parts and the frame files only it referenced; its raw files
count as unprocessed again, so the next run selects from them), and deletes leftovers older than
`LEFTOVER_MIN_AGE_S` (younger ones may belong to a run in progress; parts and frames only while the
chain is sound), and deletes damaged checkpoints (derived data: loading already skips them and reads
the manifests; the next commit writes a new one). Dropping a last commit deletes the checkpoints of
its seq and later. Other damage is reported with what to do by hand. No dagster import.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import polars as pl

from datapool_pipeline.datapool import store as store_module
from datapool_pipeline.datapool.store import (
    COMPACTED,
    ROOT,
    Checkpoint,
    Commit,
    DatapoolStore,
    chain_problems,
    parse_manifest,
)
from datapool_pipeline.errors import DamagedStateError, DatapoolError
from datapool_pipeline.storage import ObjectInfo

DAMAGED = "damaged"  # the state is wrong: commands that read it fail with one line naming it
LEFTOVER = "leftover"  # harmless remains of interrupted or beaten runs
STALE = "stale"  # a cache that no longer matches the datapool: rebuilt when next needed
NOTE = "note"


@dataclass
class Finding:
    kind: str
    where: str
    what: str
    fix: str = ""
    repaired: bool = False

    def line(self) -> str:
        if self.repaired:
            return f"repaired: {self.where}: {self.what}" + (f" ({self.fix})" if self.fix else "")
        return f"{self.kind}: {self.where}: {self.what}" + (f" -> {self.fix}" if self.fix else "")


@dataclass
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def damage(self) -> list[Finding]:
        """Damage that is still there."""
        return [f for f in self.findings if f.kind == DAMAGED and not f.repaired]

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind and not f.repaired)

    def summary(self) -> str:
        s = self.stats
        repaired = sum(1 for f in self.findings if f.repaired)
        frames = f"{s['frames']} frame file(s), " if "frames" in s else ""  # videos only
        return (
            f"{s.get('commits', 0)} commit(s), {s.get('samples', 0)} sample(s), {s.get('parts', 0)} table "
            f"part(s) verified ({s.get('checksummed', 0)} against a recorded sha256), {frames}"
            f"{s.get('checkpoints', 0)} checkpoint(s), {s.get('temp_files', 0)} temporary file(s); "
            f"{len(self.damage)} damaged, "
            f"{self.count(LEFTOVER)} leftover, {self.count(STALE)} stale"
            + (f", {repaired} repaired" if repaired else "")
        )


def check_datapool(
    store: DatapoolStore,
    *,
    dataset_type: str,
    repair: bool = False,
    min_age_s: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> CheckResult:
    """Verify the datapool. With `repair`, fix what is safe, then verify again: the result describes
    the state after the repair, preceded by what was repaired."""
    age = store_module.LEFTOVER_MIN_AGE_S if min_age_s is None else min_age_s
    checker = _Checker(store, dataset_type, age).run()
    if not repair:
        return checker.result
    repaired: list[Finding] = checker.restore_manifests()
    if repaired:
        checker = _Checker(store, dataset_type, age).run()
    dropped_checkpoints = checker.drop_damaged_checkpoints()
    if dropped_checkpoints:
        repaired += dropped_checkpoints
        checker = _Checker(store, dataset_type, age).run()
    dropped = checker.drop_damaged_last()
    if dropped is not None:
        log(dropped.what)
        repaired.append(dropped)
        checker = _Checker(store, dataset_type, age).run()
    cleaned = checker.remove_leftovers()
    for finding in cleaned:
        log(finding.what)
    repaired += cleaned
    if not repaired:
        return checker.result
    result = _Checker(store, dataset_type, age).run().result
    result.findings = repaired + result.findings
    return result


@dataclass
class _Manifest:
    key: str
    seq: int | None  # from the file name
    commit: Commit | None = None
    problems: list[str] = field(default_factory=list)
    gap: bool = False  # a manifest before it is missing (not this manifest's damage)
    sample_ids: list[str] | None = None  # when its samples part is readable
    processed: pl.DataFrame | None = None  # when its processed part is readable


class _Checker:
    def __init__(self, store: DatapoolStore, dataset_type: str, min_age_s: float) -> None:
        self.store = store
        self.storage = store.storage
        self.dataset_type = dataset_type
        self.min_age_s = min_age_s
        self.cutoff = time.time() - min_age_s
        self.result = CheckResult()
        self.manifests: list[_Manifest] = []
        self.pool_ids: list[str] = []  # of the sound commits, in commit order (what the index holds)
        self.sample_tag: dict[str, str] = {}  # every readable sample id -> its (first) tag
        self.staged: dict[str, list[str]] = {}  # staging id -> sample ids
        self.temp: list[ObjectInfo] = []
        self.unreferenced: list[ObjectInfo] = []
        self.orphan_frames: list[ObjectInfo] = []
        self.committed_staging: list[str] = []
        self.bad_checkpoints: list[tuple[str, Checkpoint | None]] = []
        self.restorable: dict[int, tuple[str, Commit]] = {}  # seq -> (checkpoint key, its commit)
        self.compacted_leftovers: list[ObjectInfo] = []

    # ---- verification ------------------------------------------------------------------------------

    def run(self) -> _Checker:
        self._owner()
        self._staging()  # before the manifests: a commit in between cannot make a frame look orphaned
        self._manifests()
        self._parts()
        self._report_manifests()
        self._staging_findings()
        if self.dataset_type == "VIDEOS":
            self._frames()
        self._unreferenced_parts()
        self._checkpoints()
        self._temp_files()
        self._index()
        self.result.stats["commits"] = len(self.manifests)
        return self

    @property
    def chain_sound(self) -> bool:
        return not any(m.problems or m.gap for m in self.manifests)

    def _add(self, kind: str, key: str, what: str, fix: str = "") -> None:
        self.result.findings.append(Finding(kind, self.storage.display(key), what, fix))

    def _age(self) -> str:
        return f"{self.min_age_s / 60:g} min"

    def _owner(self) -> None:
        try:
            self.store.owner()
        except DatapoolError:
            self._add(
                DAMAGED,
                f"{ROOT}/dataset.json",
                "is not JSON with the dataset's name and type",
                "by hand: restore it, or delete it so that the next run claims the output again",
            )

    def _staging(self) -> None:
        for sid in self.store.staging_ids():
            try:
                entry = self.store.read_staging(sid)
            except Exception:  # noqa: BLE001 - any reader error: the entry is unreadable
                self._add(
                    LEFTOVER,
                    f"{ROOT}/staging/{sid}.json",
                    "staging entry is unreadable",
                    f"by hand: delete {ROOT}/staging/{sid}.* (the next run's clean-up fails on it)",
                )
                continue
            if entry is not None:
                self.staged[sid] = entry[1]["sample_id"].to_list()

    def _manifests(self) -> None:
        for info in self.storage.list(f"{ROOT}/commits/"):
            name = info.key.rsplit("/", 1)[-1]
            if not name.endswith(".json"):
                self._add(LEFTOVER, info.key, "is not a commit manifest (ignored: not .json)", "by hand: move it")
                continue
            stem = name.removesuffix(".json")
            m = _Manifest(info.key, int(stem) if stem.isdigit() and len(stem) == 8 else None)
            try:
                m.commit = parse_manifest(info.key, self.storage.read_bytes(info.key))
            except FileNotFoundError:
                continue  # deleted while listed
            except ValueError as exc:
                m.problems.append(str(exc) or "was written by a newer datapool_pipeline (upgrade to check it)")
            self.manifests.append(m)
        self.manifests.sort(key=lambda m: (m.seq is None, m.seq or 0, m.key))
        parsed = {m.commit.seq: m for m in self.manifests if m.commit is not None}
        for commit, code, problem in chain_problems([m.commit for m in self.manifests if m.commit is not None]):
            if code == "gap":
                parsed[commit.seq].gap = True
                first = max([s for s in parsed if s < commit.seq], default=0) + 1
                self._add(
                    DAMAGED,
                    f"{ROOT}/commits/{first:08d}.json",
                    problem,
                    "by hand: restore it from a backup (its parts may still be in datapool/samples/, "
                    "processed/); every later tag is unreadable until then",
                )
            else:
                parsed[commit.seq].problems.append(problem)

    def _last(self) -> _Manifest | None:
        numbered = [m for m in self.manifests if m.seq is not None]
        return max(numbered, key=lambda m: m.seq or 0) if numbered else None

    def _parts(self) -> None:
        parts = checksummed = 0
        for m in self.manifests:
            c = m.commit
            if c is None:
                continue
            for kind in ("samples", "processed"):
                try:
                    df = self.store.read_samples(c) if kind == "samples" else self.store.read_processed(c)
                except DamagedStateError as exc:
                    part = self.storage.display(getattr(exc, "key", ""))
                    m.problems.append(f"its {kind} part {part} {getattr(exc, 'what', exc)}")
                    continue
                parts += 1
                checksummed += bool(c.samples_sha256 if kind == "samples" else c.processed_sha256)
                if kind == "samples":
                    m.sample_ids = df["sample_id"].to_list()
                else:
                    m.processed = df
        for m in self.manifests:
            if m.sample_ids is None:
                continue
            assert m.commit is not None
            dups = [s for s in m.sample_ids if s in self.sample_tag]
            if dups:
                m.problems.append(
                    f"holds {len(dups)} sample(s) of an earlier tag, e.g. {dups[0]} (in {self.sample_tag[dups[0]]})"
                )
            for sid in m.sample_ids:
                self.sample_tag.setdefault(sid, m.commit.tag)
        sound = []
        for m in self.manifests:
            if m.problems or m.gap or m.sample_ids is None:
                break
            sound.extend(m.sample_ids)
        self.pool_ids = sound
        self.result.stats.update(parts=parts, checksummed=checksummed, samples=len(self.sample_tag))

    def _report_manifests(self) -> None:
        last = self._last()
        for m in self.manifests:
            fix = (
                "--repair drops this last commit"
                if m is last and not m.gap and m.seq is not None
                else "by hand: restore it and its parts from a backup (it is not the last commit)"
            )
            if m.seq is None:
                fix = "by hand: move it out of datapool/commits/"
            for problem in dict.fromkeys(m.problems):
                self._add(DAMAGED, m.key, problem, fix)

    def _staging_findings(self) -> None:
        committed = {m.commit.staging_id for m in self.manifests if m.commit is not None}
        for sid, ids in self.staged.items():
            if sid in committed:
                self.committed_staging.append(sid)
                self._add(
                    LEFTOVER,
                    f"{ROOT}/staging/{sid}.json",
                    "staging entry of a committed tag",
                    "--repair and the next run delete it",
                )
            else:
                self._add(
                    NOTE,
                    f"{ROOT}/staging/{sid}.json",
                    f"a selection of {len(ids)} sample(s) not "
                    "committed (a run in progress, or a crashed one: resume it, or the next run removes it)",
                )

    def _frames(self) -> None:
        listed = {i.key: i for i in self.storage.list("frames/")}
        self.result.stats["frames"] = len(listed)
        missing: dict[str, list[str]] = {}
        for sid, tag in self.sample_tag.items():
            if sid not in listed:
                missing.setdefault(tag, []).append(sid)
        for tag, ids in missing.items():
            self._add(
                DAMAGED,
                "frames/",
                f"{len(ids)} frame file(s) of tag {tag} are missing, e.g. {ids[0]}",
                "by hand: restore them from a backup (`export` lists them although they do not exist)",
            )
        staged = {s for ids in self.staged.values() for s in ids}
        orphans = [i for k, i in listed.items() if k not in self.sample_tag and k not in staged]
        self.orphan_frames = [i for i in orphans if i.mtime < self.cutoff] if self.chain_sound else []
        if orphans:
            self._add(
                LEFTOVER,
                "frames/",
                f"{len(orphans)} frame file(s) in no tag and no staged selection, e.g. {orphans[0].key}",
                self._leftover_fix(len(self.orphan_frames), "--repair deletes"),
            )

    def _leftover_fix(self, old: int, action: str) -> str:
        if old:
            return f"{action} the {old} older than {self._age()}"
        if not self.chain_sound:
            return "kept while the chain is damaged"
        return f"none older than {self._age()}: may belong to a run in progress"

    def _unreferenced_parts(self) -> None:
        referenced = {p for m in self.manifests if m.commit for p in (m.commit.samples_file, m.commit.processed_file)}
        found = [
            i
            for folder in ("samples", "processed")
            for i in self.storage.list(f"{ROOT}/{folder}/")
            if i.key not in referenced
        ]
        self.unreferenced = [i for i in found if i.mtime < self.cutoff] if self.chain_sound else []
        if found:
            self._add(
                LEFTOVER,
                f"{ROOT}/",
                f"{len(found)} table part(s) that no commit references (of a crashed or "
                f"beaten commit, or of a deleted manifest), e.g. {found[0].key}",
                self._leftover_fix(len(self.unreferenced), "--repair and the next commit delete"),
            )

    def _checkpoints(self) -> None:
        fix = "--repair deletes it (loads skip it and read the manifests; the next commit writes a new one)"
        by_seq = {m.commit.seq: m for m in self.manifests if m.commit is not None}
        referenced: set[str] = set()
        keys = self.store.checkpoint_keys(fresh=True)
        self.result.stats["checkpoints"] = len(keys)
        for seq, key in keys:
            self.store._checkpoints.pop(key, None)  # verify what is stored now, not a cached copy
            try:
                checkpoint = self.store.read_checkpoint(key)
            except ValueError as exc:
                self.bad_checkpoints.append((key, None))
                self._add(DAMAGED, key, f"checkpoint {exc}", fix)
                continue
            referenced |= {checkpoint.processed.key, checkpoint.registry.key}
            problems = []
            missing = []
            for commit in checkpoint.commits:
                m = by_seq.get(commit.seq)
                if m is None:
                    missing.append(commit)  # deleted or unparseable: the checkpoint holds a copy
                elif m.commit != commit:
                    problems.append(f"holds commit #{commit.seq} unlike its manifest {self.storage.display(m.key)}")
                    break
            if not problems:
                for commit in missing:
                    self.restorable.setdefault(commit.seq, (key, commit))
            compacted = {}
            for name in ("processed", "registry"):
                try:
                    compacted[name] = self.store.read_checkpoint_part(checkpoint, name)
                except DamagedStateError as exc:
                    problems.append(
                        f"its {name} part {self.storage.display(getattr(exc, 'key', ''))} {getattr(exc, 'what', exc)}"
                    )
            parts = [by_seq[s].processed if s in by_seq else None for s in range(1, seq + 1)]
            if not problems and all(p is not None for p in parts):
                keys_ = ["raw_key", "raw_version"]
                expected = pl.concat(parts, how="vertical").unique(subset=keys_, keep="last")  # type: ignore[arg-type]
                got = compacted["processed"].select(expected.columns)
                if got.height != expected.height or not got.sort(keys_).equals(expected.sort(keys_)):
                    problems.append(f"its processed table differs from the processed parts of commits 1..{seq}")
            if problems:
                self.bad_checkpoints.append((key, checkpoint))
                for problem in problems:
                    self._add(DAMAGED, key, f"checkpoint {problem}", fix)
        for seq, (key, commit) in sorted(self.restorable.items()):
            where = self.storage.display(f"{ROOT}/commits/{seq:08d}.json")
            fix = f"--repair restores it from checkpoint {self.storage.display(key)}"
            found_for = [f for f in self.result.findings if f.kind == DAMAGED and f.where == where]
            for finding in found_for:
                finding.fix = fix
            if not found_for:  # a deleted last manifest: the chain alone cannot tell
                self._add(
                    DAMAGED,
                    f"{ROOT}/commits/{seq:08d}.json",
                    f"is missing, but checkpoint {self.storage.display(key)} holds tag "
                    f"{commit.tag} (#{seq}): a deleted last manifest",
                    fix,
                )
        found = [i for i in self.storage.list(COMPACTED) if i.key not in referenced]
        self.compacted_leftovers = [i for i in found if i.mtime < self.cutoff]
        if found:
            self._add(
                LEFTOVER,
                COMPACTED,
                f"{len(found)} compacted part(s) that no checkpoint names (of a crashed or pruned "
                f"checkpoint), e.g. {found[0].key}",
                self._leftover_fix(len(self.compacted_leftovers), "--repair and the next checkpoint delete")
                if self.compacted_leftovers or self.chain_sound
                else "",
            )

    def _temp_files(self) -> None:
        temp_files = getattr(self.storage, "temp_files", None)  # local outputs; object stores have none
        found = list(temp_files()) if temp_files is not None else []
        self.temp = [i for i in found if i.mtime < self.cutoff]
        self.result.stats["temp_files"] = len(found)
        if found:
            self._add(
                LEFTOVER,
                "",
                f"{len(found)} temporary file(s) of interrupted writes, e.g. {found[0].key}",
                f"--repair and the next run delete the {len(self.temp)} older than {self._age()}"
                if self.temp
                else f"none older than {self._age()}: may belong to a write in progress",
            )

    def _index(self) -> None:
        from datapool_pipeline.datapool.pool_index import INDEX_PREFIX, ids_digest

        rebuild = "a cache: the next run that needs it rebuilds it"
        for info in self.storage.list(f"{INDEX_PREFIX}/"):
            if not info.key.endswith(".json"):
                continue
            base = info.key.removesuffix(".json")
            try:
                meta = json.loads(self.storage.read_bytes(info.key))
                size, digest = int(meta["size"]), str(meta["ids_digest"])
            except (ValueError, KeyError, TypeError):
                self._add(STALE, info.key, "is not an index description", rebuild)
                continue
            if not self.storage.exists(f"{base}.hnsw"):
                self._add(STALE, info.key, f"describes {base}.hnsw, which is missing", rebuild)
            elif not self.chain_sound:
                self._add(NOTE, info.key, "index not compared with the datapool (the chain is damaged)")
            elif size > len(self.pool_ids) or ids_digest(self.pool_ids[:size]) != digest:
                self._add(
                    STALE,
                    info.key,
                    f"index of {size} sample(s) that are not the first of the datapool's {len(self.pool_ids)}",
                    rebuild,
                )
            elif size < len(self.pool_ids):
                self._add(
                    NOTE,
                    info.key,
                    f"index holds {size} of the {len(self.pool_ids)} samples (the next run "
                    "that needs it adds the rest)",
                )

    # ---- repair ------------------------------------------------------------------------------------

    def restore_manifests(self) -> list[Finding]:
        """Write back the manifests that are missing or unparseable but held by a checkpoint that
        agrees with every other manifest (the bytes a commit writes)."""
        done = []
        for seq, (key, commit) in sorted(self.restorable.items()):
            manifest = f"{ROOT}/commits/{seq:08d}.json"
            body = json.dumps(asdict(commit), indent=2, sort_keys=True).encode()
            if self.storage.exists(manifest):
                self.storage.write_bytes(manifest, body)  # unparseable: replaced
            elif not self.storage.put_if_absent(manifest, body):
                continue
            done.append(
                Finding(
                    DAMAGED,
                    self.storage.display(manifest),
                    f"restored commit #{seq} (tag {commit.tag}) from checkpoint {self.storage.display(key)}",
                    repaired=True,
                )
            )
        return done

    def drop_damaged_checkpoints(self) -> list[Finding]:
        done = []
        for key, checkpoint in self.bad_checkpoints:
            self._delete_checkpoint(key, checkpoint)
            done.append(Finding(DAMAGED, self.storage.display(key), "deleted the damaged checkpoint", repaired=True))
        return done

    def _delete_checkpoint(self, key: str, checkpoint: Checkpoint | None) -> None:
        """The JSON first (then nothing names the parts), then its parts (those of an unreadable
        JSON become unreferenced compacted parts: a leftover)."""
        self.storage.delete(key)
        self.store._checkpoints.pop(key, None)
        if checkpoint is not None:
            self.storage.delete(checkpoint.processed.key)
            self.storage.delete(checkpoint.registry.key)

    def drop_damaged_last(self) -> Finding | None:
        """Delete the last manifest when it is the only damaged one (not when a manifest before it is
        missing: dropping a sound commit would not restore the gap)."""
        last = self._last()
        damaged = [m for m in self.manifests if m.problems or m.gap]
        if last is None or damaged != [last] or last.gap or not last.problems:
            return None
        what = f"dropped the damaged last commit #{last.seq}"
        # The checkpoints that hold it first: one left without its manifest would restore it.
        for seq, key in self.store.checkpoint_keys(fresh=True):
            if seq >= (last.seq or 0):
                try:
                    checkpoint: Checkpoint | None = self.store.read_checkpoint(key)
                except ValueError:
                    checkpoint = None
                self._delete_checkpoint(key, checkpoint)
                what += f" and its checkpoint {self.storage.display(key)}"
        self.storage.delete(last.key)
        c = last.commit
        if c is None:  # unparseable: its parts are the ones named after its seq (no run commits on damage)
            for folder in ("samples", "processed"):
                for info in list(self.storage.list(f"{ROOT}/{folder}/")):
                    if info.key.startswith(f"{ROOT}/{folder}/{last.seq:08d}-"):
                        self.storage.delete(info.key)
        else:
            what += f" (tag {c.tag})"
            others = [m for m in self.manifests if m is not last and m.commit is not None]
            in_use = {p for m in others for p in (m.commit.samples_file, m.commit.processed_file)}  # type: ignore[union-attr]
            for part in (c.samples_file, c.processed_file):
                if part not in in_use:
                    self.storage.delete(part)
            if self.dataset_type == "VIDEOS" and last.sample_ids is not None and c.samples_file not in in_use:
                kept = {s for m in others for s in (m.sample_ids or [])} | {
                    s for ids in self.staged.values() for s in ids
                }
                frames = [s for s in last.sample_ids if s not in kept]
                for sid in frames:
                    self.storage.delete(sid)
                what += f", its parts and {len(frames)} frame file(s) only it referenced"
        return Finding(
            DAMAGED,
            self.storage.display(last.key),
            what,
            "its raw files count as unprocessed again: the next run selects from them",
            repaired=True,
        )

    def remove_leftovers(self) -> list[Finding]:
        done: list[Finding] = []
        groups = [
            ("temporary file(s) of interrupted writes", "", self.temp),
            ("unreferenced table part(s)", f"{ROOT}/", self.unreferenced if self.chain_sound else []),
            ("compacted part(s) that no checkpoint names", COMPACTED, self.compacted_leftovers),
            (
                "frame file(s) in no tag and no staged selection",
                "frames/",
                self.orphan_frames if self.chain_sound else [],
            ),
        ]
        for what, where, infos in groups:
            for info in infos:
                self.storage.delete(info.key)
            if infos:
                done.append(
                    Finding(
                        LEFTOVER,
                        self.storage.display(where),
                        f"deleted {len(infos)} {what} older than {self._age()}",
                        repaired=True,
                    )
                )
        for sid in self.committed_staging:
            self.store.delete_staging(sid)
        if self.committed_staging:
            done.append(
                Finding(
                    LEFTOVER,
                    self.storage.display(f"{ROOT}/staging/"),
                    f"deleted {len(self.committed_staging)} staging entries of committed tags",
                    repaired=True,
                )
            )
        return done
