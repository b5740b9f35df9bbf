"""State reads after a long history (issue 12 item 2): objects read and time of run start and of
`datapool tags` after 10 commits and after 1,000, with checkpoints and without them.

Set-up: a local output written through the store API (DatapoolStore.commit and append_registry, not full
runs): per commit one registry part (its run's shards, stamped one simulated hour apart), a processed
part of `--files` rows and a samples part of `--samples` rows; every CHECKPOINT_EVERY commits the
commit writes a checkpoint, as a run does. Measured on a fresh DatapoolStore each time, through a
Storage wrapper that counts reads (read_bytes) and listings:

- tags: what `datapool tags` reads: the owner record (dataset.json) and the chain of commits;
- run start: what discovery reads before its first write: owner, chain, staging listing, the
  processed table and the shard registry (also a sensor tick's state reads).

Also reported: the time on an object store, modelled as the measured time plus `--latency-ms` (20) per
read or listing request (a GET or LIST on S3 in-region takes ~10-50 ms; the local reads above take
microseconds, so the local time alone mostly measures decoding).

Rows: 10 commits, 1,000 commits (a checkpoint at 1,000), 1,000 + CHECKPOINT_EVERY - 1 commits (the
most manifests after a checkpoint), and each of them loaded with checkpoints ignored (the chain of
every manifest and part, what loading did before checkpoints). Targets at 1,000 commits: <= 20
objects read, time within 2x of 10 commits.

Usage: python benchmarks/bench_state.py [--quick] [--commits 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datapool_pipeline.datapool import DatapoolStore, tables  # noqa: E402
from datapool_pipeline.datapool import store as store_module  # noqa: E402
from datapool_pipeline.storage import LocalStorage  # noqa: E402

DIM = 16


class Counting:
    """Counts the reads and listings of a Storage (patched on the instance)."""

    def __init__(self, storage: LocalStorage) -> None:
        self.reads = self.lists = self.listed = 0
        read, listing = storage.read_bytes, storage.list

        def read_bytes(key: str) -> bytes:
            self.reads += 1
            return read(key)

        def list_(prefix: str = "", start_after: str = ""):  # type: ignore[no-untyped-def]
            self.lists += 1
            for info in listing(prefix, start_after):
                self.listed += 1
                yield info

        storage.read_bytes = read_bytes  # type: ignore[method-assign]
        storage.list = list_  # type: ignore[method-assign]


def build(out: Path, commits: int, files: int, samples: int) -> float:
    store = DatapoolStore(LocalStorage(out))
    store.storage.write_bytes(store_module.IDENTITY_KEY, json.dumps({"name": "bench", "type": "VIDEOS"}).encode())
    start = time.perf_counter()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = np.random.default_rng(0)
    for i in range(commits):
        tag = f"t{i + 1:05d}"
        keys = [f"day{i:05d}/clip_{j:03d}.mp4" for j in range(files)]
        reg = pl.DataFrame(
            {"shard_id": [f"v-{k}" for k in keys], "raw_key": keys, "raw_version": ["1-1"] * files,
             "raw_size": [1000] * files, "media_type": ["VIDEOS"] * files},
            schema=tables.REGISTRY_SCHEMA,
        )
        store.append_registry(reg, now=t0 + timedelta(hours=i))
        emb = rng.standard_normal((samples, DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        picked = keys[:samples]
        sample_df = pl.DataFrame(
            {"sample_id": [tables.frame_filename(k, "1-1", 0) for k in picked], "raw_key": picked,
             "raw_version": ["1-1"] * samples, "frame_index": [0] * samples, "timestamp_s": [0.0] * samples,
             "tag": [tag] * samples, "pick_rank": list(range(samples)), "pick_distance": [1.0] * samples,
             "pool_distance": [1.0] * samples, "embedding": emb},
            schema=tables.sample_schema(DIM),
        )
        processed = pl.DataFrame(
            {"raw_key": keys, "raw_version": ["1-1"] * files, "raw_size": [1000] * files,
             "media_type": ["VIDEOS"] * files, "status": ["ok"] * files, "error": [""] * files,
             "frames": [3] * files, "tag": [tag] * files},
            schema=tables.PROCESSED_SCHEMA,
        )
        store.commit(store.load_state(), tag=tag, run_id=f"r{i}", staging_id=f"r{i}", samples=sample_df,
                     processed=processed, dataset_type="VIDEOS", embedding_model="m", embedding_dim=DIM, config={})
        assert store.checkpoint_error is None, store.checkpoint_error
    return time.perf_counter() - start


def measure(out: Path, repeats: int, checkpoints: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ("tags", "run_start"):
        times, counts = [], None
        for attempt in range(repeats + 1):  # the first one warms up (page cache, polars)
            storage = LocalStorage(out)
            counter = Counting(storage)
            store = DatapoolStore(storage)
            if not checkpoints:
                store.checkpoint_keys = lambda: []  # type: ignore[method-assign]
            start = time.perf_counter()
            store.owner()
            state = store.load_state()
            listed = [(c.tag, c.n_samples) for c in reversed(state.commits)]
            if name == "run_start":
                store.staging_ids()
                _ = state.processed.height, store.read_registry().height
            if attempt:
                times.append(time.perf_counter() - start)
            counts = (counter.reads, counter.lists, counter.listed)
            assert len(listed) == state.head_seq
        assert counts is not None
        result[name] = {"reads": counts[0], "list_calls": counts[1], "keys_listed": counts[2],
                        "seconds_median": statistics.median(times), "seconds_min": min(times)}
    if checkpoints:
        result["tags_cli"] = cli_tags(out, repeats)
    return result


def cli_tags(out: Path, repeats: int) -> dict[str, Any]:
    """`datapool tags` as a user runs it (a new process: interpreter, imports, datasets.yaml, the load)."""
    yaml = out.parent / f"{out.name}.yaml"
    (out.parent / "input").mkdir(exist_ok=True)
    yaml.write_text(f"datasets:\n  bench:\n    type: VIDEOS\n    input: {out.parent / 'input'}\n    output: {out}\n")
    times, lines = [], 0
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "datapool_pipeline.cli", "tags", "bench", "--datasets", str(yaml)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        if attempt:
            times.append(time.perf_counter() - start)
        lines = len(done.stdout.splitlines())
    return {"seconds_median": statistics.median(times), "lines": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 processed rows per commit, 3 repeats")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--files", type=int, default=0, help="processed rows (files) per commit")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="modelled object-store request latency")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    files = args.files or (20 if args.quick else 100)
    samples = 5
    k = store_module.CHECKPOINT_EVERY
    sizes = [10, args.commits, args.commits + k - 1]
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            out = Path(tmp) / f"out-{n}"
            built = build(out, n, files, samples)
            print(f"built {n} commits in {built:.1f}s", file=sys.stderr)
            rows[str(n)] = {"build_seconds": round(built, 2), "checkpoints": measure(out, repeats, True),
                            "without_checkpoints": measure(out, repeats, False)}
        # what writing one checkpoint costs at the largest size
        store = DatapoolStore(LocalStorage(Path(tmp) / f"out-{sizes[-1]}"))
        state = store.load_state()
        start = time.perf_counter()
        store.write_checkpoint(state)  # the checkpoint of the last commit (none exists for it yet)
        checkpoint_write_s = time.perf_counter() - start

    print(f"\nK = CHECKPOINT_EVERY = {k}; {files} processed rows and 1 registry part per commit; median of {repeats}")
    head = f"{'commits':>8} {'op':>10} | {'reads':>5} {'lists':>5} {'listed':>6} {'ms':>8} | " \
           f"{'reads':>5} {'lists':>5} {'listed':>6} {'ms':>8}   (checkpoints | without)"
    print(head)
    for n in sizes:
        for op in ("tags", "run_start"):
            a, b = rows[str(n)]["checkpoints"][op], rows[str(n)]["without_checkpoints"][op]
            print(f"{n:>8} {op:>10} | {a['reads']:>5} {a['list_calls']:>5} {a['keys_listed']:>6} "
                  f"{a['seconds_median'] * 1000:>8.1f} | {b['reads']:>5} {b['list_calls']:>5} "
                  f"{b['keys_listed']:>6} {b['seconds_median'] * 1000:>8.1f}")
    for n in sizes:
        print(f"{n:>8} datapool tags (CLI process): {rows[str(n)]['checkpoints']['tags_cli']}")
    summary: dict[str, Any] = {"checkpoint_every": k,
                               "checkpoint_write_seconds_at_largest": round(checkpoint_write_s, 3)}
    for op in ("tags", "run_start"):
        small, large, worst = (rows[str(n)]["checkpoints"][op] for n in sizes)
        summary[op] = {
            f"reads_at_{sizes[1]}": large["reads"],
            f"reads_at_{sizes[2]}_worst_case": worst["reads"],
            f"time_ratio_{sizes[1]}_vs_10": round(large["seconds_median"] / small["seconds_median"], 2),
            f"time_ratio_{sizes[2]}_vs_10": round(worst["seconds_median"] / small["seconds_median"], 2),
            f"reads_at_{sizes[1]}_without_checkpoints": rows[str(sizes[1])]["without_checkpoints"][op]["reads"],
            f"time_ratio_{sizes[1]}_vs_10_without_checkpoints": round(
                rows[str(sizes[1])]["without_checkpoints"][op]["seconds_median"]
                / rows["10"]["without_checkpoints"][op]["seconds_median"], 2),
        }
    cli = [rows[str(n)]["checkpoints"]["tags_cli"].get("seconds_median") for n in sizes]
    if all(cli):
        summary["tags_cli"] = {f"seconds_at_{n}": round(t, 3) for n, t in zip(sizes, cli, strict=True)}
        summary["tags_cli"][f"time_ratio_{sizes[1]}_vs_10"] = round(cli[1] / cli[0], 2)
        summary["tags_cli"][f"time_ratio_{sizes[2]}_vs_10"] = round(cli[2] / cli[0], 2)
    lat = args.latency_ms / 1000
    for n in sizes:
        for mode in ("checkpoints", "without_checkpoints"):
            for op in ("tags", "run_start"):
                r = rows[str(n)][mode][op]
                r["modelled_object_store_seconds"] = r["seconds_median"] + (r["reads"] + r["list_calls"]) * lat
    for op in ("tags", "run_start"):
        small, large, worst = (rows[str(n)]["checkpoints"][op]["modelled_object_store_seconds"] for n in sizes)
        summary[op][f"modelled_object_store_seconds_at_{sizes[0]}_{sizes[1]}_{sizes[2]}"] = [
            round(small, 3), round(large, 3), round(worst, 3)]
        summary[op][f"modelled_object_store_ratio_{sizes[1]}_vs_10"] = round(large / small, 2)
        summary[op][f"modelled_object_store_ratio_{sizes[2]}_vs_10"] = round(worst / small, 2)
        summary[op][f"modelled_object_store_ratio_{sizes[1]}_vs_10_without_checkpoints"] = round(
            rows[str(sizes[1])]["without_checkpoints"][op]["modelled_object_store_seconds"]
            / rows["10"]["without_checkpoints"][op]["modelled_object_store_seconds"], 2)
    summary["modelled_latency_ms_per_request"] = args.latency_ms
    summary["targets"] = {"reads": "<= 20 objects", "time_ratio": "<= 2"}
    print(json.dumps(summary, indent=2))
    from benchmarks._common import cpu_model, write_result

    write_result("state", args.quick, {"cpu_model": cpu_model(), "sizes": sizes, "repeats": repeats,
                                       "files_per_commit": files, "samples_per_commit": samples, "rows": rows,
                                       "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
