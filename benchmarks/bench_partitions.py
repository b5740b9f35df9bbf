"""Dagster partitions for 10^6 videos: shards of several videos (videos_per_shard, max_shard_megabytes).

A simulated listing of 10^6 videos (keys, versions and sizes only; no files): the shards `assign_shards` (what
`datapool run`, the UI launch and the sensor call) registers for them in one run, against one partition per
video before; the number of partitions when the videos arrive a few per sensor tick (each tick groups its new
files); and the same under other size distributions, since a shard also closes at max_shard_megabytes. With
--quick and without, the grouped partitions are added to a temporary SQLite Dagster instance and read back.
Target (issue 12): < 10^5 partitions for 10^6 videos.

    python benchmarks/bench_partitions.py --quick   # 10^6 videos; arrivals of 1 per tick over 10^5 videos
    python benchmarks/bench_partitions.py           # also 1 per tick over 10^6 and 10^6 partitions in Dagster
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks._common import cpu_model, timed, write_result  # noqa: E402

MB = 2**20
TARGET = 100_000


def simulated_sizes(n: int, median_mb: float, sigma: float, seed: int = 0) -> np.ndarray:
    """Lognormal file sizes (bytes): a median and a heavy tail, like a bucket of clips and some long videos."""
    rng = np.random.default_rng(seed)
    return (rng.lognormal(np.log(median_mb * MB), sigma, n)).astype(np.int64)


def registry_of(sizes: np.ndarray) -> object:
    import polars as pl

    from datapool_pipeline.datapool import tables

    n = len(sizes)
    keys = [f"videos/{i // 1000:04d}/clip_{i:07d}.mp4" for i in range(n)]
    return pl.DataFrame({"raw_key": keys, "raw_version": [f"v{i}" for i in range(n)], "raw_size": sizes,
                         "media_type": ["VIDEOS"] * n}, schema=tables.FILE_COLUMNS)


def per_tick(sizes: np.ndarray, arrivals: int, per_shard: int, max_bytes: int) -> int:
    """Partitions when the videos arrive `arrivals` per sensor tick (each tick groups only its new files)."""
    from datapool_pipeline.workflow.discovery import shard_starts

    values = sizes.tolist()
    return sum(len(shard_starts(values[i:i + arrivals], per_shard, max_bytes)) for i in range(0, len(values), arrivals))


def per_tick_waiting(sizes: list[int], arrivals: int, per_shard: int, max_bytes: int, wait_s: float,
                     tick_s: float = 60.0) -> int:
    """Partitions under sensor.shard_wait_seconds: the rule of launch._hold_partial_shard, simulated without
    files (new keys sort after the held ones). Checked against the real scan_new_files in `real_sensor`."""
    from datapool_pipeline.workflow.discovery import shard_starts

    pending: list[int] = []
    since: float | None = None
    parts, now = 0, 0.0
    for i in range(0, len(sizes), arrivals):
        batch = pending + sizes[i:i + arrivals]
        starts = shard_starts(batch, per_shard, max_bytes)
        held_since = since if pending and starts[-1] < len(pending) else now
        if len(batch) - starts[-1] < per_shard and now - held_since < wait_s:
            parts += len(starts) - 1
            pending, since = batch[starts[-1]:], held_since
        else:
            parts += len(starts)
            pending, since = [], None
        now += tick_s
    return parts + (1 if pending else 0)


def real_sensor(ticks: int, wait_s: int, tick_s: float = 60.0) -> int:
    """scan_new_files itself, one new (tiny, fake) video per tick: partitions registered (+1 if files are held)."""
    from datapool_pipeline.datapool import DatapoolStore
    from datapool_pipeline.datasets import DatasetSpec
    from datapool_pipeline.launch import ScanCursor, scan_new_files
    from datapool_pipeline.storage import LocalStorage

    with tempfile.TemporaryDirectory() as tmp:
        spec = DatasetSpec(name="videos", type="VIDEOS", input=f"{tmp}/in", output=f"{tmp}/out",
                           sensor={"shard_wait_seconds": wait_s})
        folder = Path(spec.input)
        folder.mkdir()
        store, storage = DatapoolStore(LocalStorage(spec.output)), LocalStorage(spec.input)
        partitions: list[str] = []
        cursor = ScanCursor()
        for t in range(ticks):
            (folder / f"clip_{t:06d}.mp4").write_bytes(b"x")
            scan = scan_new_files(spec, store, storage, partitions, cursor, now=t * tick_s)
            partitions += scan.new_partitions
            cursor = ScanCursor.parse(scan.cursor.serialize())
        return len(partitions) + (1 if cursor.pending else 0)


def dagster_partitions(keys: list[str]) -> dict[str, float]:
    """Add the partitions to a temporary SQLite instance in one call (as prepare_run does) and read them."""
    import dagster as dg

    with tempfile.TemporaryDirectory() as home:
        instance = dg.DagsterInstance.local_temp(home)
        try:
            _, add_s = timed(lambda: instance.add_dynamic_partitions("videos__shards", keys))
        except Exception as exc:  # noqa: BLE001 - the measurement: SQLite refuses the statement
            return {"partitions": len(keys), "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        got, get_s = timed(lambda: instance.get_dynamic_partitions("videos__shards"))
        _, has_s = timed(lambda: instance.has_dynamic_partition("videos__shards", keys[-1]))
        assert len(got) == len(keys)
        return {"partitions": len(keys), "add_s": round(add_s, 3), "get_all_s": round(get_s, 3),
                "has_one_s": round(has_s, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--videos", type=int, default=1_000_000)
    args = parser.parse_args()

    from datapool_pipeline.datapool import DatapoolStore
    from datapool_pipeline.datasets import DatasetSpec
    from datapool_pipeline.storage import LocalStorage
    from datapool_pipeline.workflow.discovery import assign_shards, shard_limits, shard_starts

    n = args.videos
    with tempfile.TemporaryDirectory() as tmp:
        spec = DatasetSpec(name="videos", type="VIDEOS", input=f"{tmp}/in", output=f"{tmp}/out")
        per_shard, max_bytes = shard_limits(spec)
        assert max_bytes is not None
        print(f"{n} simulated videos; videos_per_shard {per_shard}, max_shard_megabytes {max_bytes // MB}")

        # One run finds them all: the real registration (shard ids, registry part written to a temp folder).
        sizes = simulated_sizes(n, median_mb=20, sigma=1.0)
        files = registry_of(sizes)
        store = DatapoolStore(LocalStorage(f"{tmp}/out"))
        (needed, rows), assign_s = timed(lambda: assign_shards(spec, store, files))  # type: ignore[arg-type]
        registry, read_s = timed(store.read_registry)
        bulk = len(needed)
        assert registry.height == n and rows["shard_id"].n_unique() == bulk
        print(f"one run over all (median 20 MB, lognormal sigma 1): {bulk} partitions (was {n}, one per video); "
              f"assign_shards {assign_s:.1f}s, registry read {read_s:.1f}s; target < {TARGET}: "
              f"{'met' if bulk < TARGET else 'NOT met'}")

        # Other size distributions: the size cap, not the count, sets the partitions of large videos.
        distributions = {}
        for label, median, sigma in (("clips, median 5 MB", 5, 0.5), ("median 100 MB", 100, 1.0),
                                     ("720p hours, median 1.5 GB", 1536, 0.3)):
            s = simulated_sizes(n, median, sigma, seed=1)
            parts, secs = timed(lambda s=s: len(shard_starts(s.tolist(), per_shard, max_bytes)))
            distributions[label] = {"median_mb": median, "sigma": sigma, "partitions": parts,
                                    "total_tb": round(float(s.sum()) / 2**40, 1), "group_s": round(secs, 2)}
            print(f"  {label}: {parts} partitions ({distributions[label]['total_tb']} TB in all)")

        # Arrivals a few per sensor tick: each tick groups its own new files.
        arrivals = {}
        counts = [1, 3, 10, 100, 1000] if not args.quick else [3, 10, 100, 1000]
        for k in counts:
            arrivals[k] = per_tick(sizes, k, per_shard, max_bytes)
            print(f"  {k} new video(s) per tick: {arrivals[k]} partitions")
        if args.quick:  # one per tick is one partition per video whatever the grouping: shown at 10^5
            arrivals[1] = per_tick(sizes[:100_000], 1, per_shard, max_bytes) * (n // 100_000)
            print(f"  1 new video per tick: {arrivals[1]} partitions (one per tick: the sensor does not wait)")

        # sensor.shard_wait_seconds: a partly filled shard waits in the cursor for more new files.
        values = sizes.tolist()
        waiting: dict[str, int] = {}
        for wait_s in (300, 900, 3600):
            for k in (1, 3, 10):
                waiting[f"{k}_per_tick_wait_{wait_s}s"] = per_tick_waiting(values, k, per_shard, max_bytes, wait_s)
            print(f"  shard_wait_seconds {wait_s}, 60 s ticks, 1 / 3 / 10 new per tick: "
                  f"{waiting[f'1_per_tick_wait_{wait_s}s']} / {waiting[f'3_per_tick_wait_{wait_s}s']} / "
                  f"{waiting[f'10_per_tick_wait_{wait_s}s']} partitions")
        check_ticks = 120 if args.quick else 400
        (real, sim), check_s = timed(lambda: (real_sensor(check_ticks, 900),
                                              per_tick_waiting([1] * check_ticks, 1, per_shard, max_bytes, 900)))
        assert real == sim, (real, sim)
        print(f"  check: scan_new_files over {check_ticks} ticks of 1 new video, wait 900 s: {real} partitions, "
              f"as simulated ({check_s:.1f}s)")

        dagster = dagster_partitions(list(needed))
        print(f"Dagster SQLite instance: {dagster}")
        old = None if args.quick else dagster_partitions([f"v-{i}" for i in range(n)])
        if old:
            print(f"Dagster SQLite instance, one partition per video, added in one call: {old}")

    write_result("partitions", args.quick, {
        "cpu_model": cpu_model(),
        "videos": n,
        "videos_per_shard": per_shard,
        "max_shard_megabytes": max_bytes // MB,
        "partitions_one_per_video": n,
        "partitions": bulk,
        "target": f"< {TARGET}",
        "met": bulk < TARGET,
        "sizes": "lognormal, median 20 MB, sigma 1.0, seed 0",
        "assign_shards_s": round(assign_s, 2),
        "registry_read_s": round(read_s, 2),
        "other_size_distributions": distributions,
        "partitions_by_new_videos_per_tick": arrivals,
        "partitions_with_shard_wait_seconds": waiting,
        "shard_wait_check": {"ticks": check_ticks, "real_scan_new_files": real, "simulated": sim},
        "dagster_sqlite": dagster,
        "dagster_sqlite_one_per_video": old,
        "finished": time.strftime("%H:%M:%S"),
    })


if __name__ == "__main__":
    main()
