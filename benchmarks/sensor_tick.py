"""Sensor tick time on an input of 100,000 objects (local folder, real Dagster SQLite instance).

Scenarios:
  first_tick      nothing registered yet: list one slice, register up to files_per_run * max_runs_per_tick
                  new files as shards (registry Parquet + dynamic partitions), build the run requests.
  steady_pass     every object already claimed (100,000 shards = dynamic partitions): the ticks of one
                  full pass over the input; each lists max_objects_per_tick objects and finds nothing.
  unbounded_tick  the same steady state with max_objects_per_tick = 100,000 (no cursor bound).

Usage: python benchmarks/sensor_tick.py [--objects 100000] [--out benchmarks/results/sensor_tick.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.definitions import build_definitions
from datapool_pipeline.storage import open_storage
from datapool_pipeline.workflow.discovery import shard_id

SENSOR = "bench_new_files"
PARTITIONS = "bench__shards"


def make_objects(folder: Path, n: int) -> None:
    """n objects in 100 sub-folders, as a bucket prefix would hold them (empty: the sensor never reads them)."""
    for i in range(n):
        sub = folder / f"cam{i % 100:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"clip_{i:07d}.mp4").touch()


def write_yaml(root: Path, max_objects: int) -> Path:
    path = root / "datasets.yaml"
    path.write_text(
        f"""datasets:
  bench:
    type: VIDEOS
    input: {root / 'input'}
    output: {root / 'output'}
    embedding: {{model: ViT-S-32, pretrained: none}}
    sensor:
      enabled: true
      files_per_run: 100
      max_runs_per_tick: 10
      max_objects_per_tick: {max_objects}
      selection_config: {{n_samples: 10}}
"""
    )
    return path


def tick(datasets: Path, instance: dg.DagsterInstance, cursor: str | None) -> tuple[float, dg.SensorResult]:
    defs = build_definitions(str(datasets))
    sensor = defs.resolve_sensor_def(SENSOR)
    start = time.perf_counter()
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    return time.perf_counter() - start, result


def claim_everything(root: Path, instance: dg.DagsterInstance) -> float:
    """Steady state: every object registered as a one-video shard and added as a dynamic partition."""
    start = time.perf_counter()
    listed = list(open_storage(str(root / "input")).list())
    rows = pl.DataFrame(
        {
            "shard_id": [shard_id("VIDEOS", [(o.key, o.version)]) for o in listed],
            "raw_key": [o.key for o in listed],
            "raw_version": [o.version for o in listed],
            "raw_size": [o.size for o in listed],
            "media_type": ["VIDEOS"] * len(listed),
        }
    )
    DatapoolStore(open_storage(str(root / "output"))).append_registry(rows)
    existing = set(instance.get_dynamic_partitions(PARTITIONS))
    instance.add_dynamic_partitions(PARTITIONS, [s for s in rows["shard_id"].to_list() if s not in existing])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--max-objects-per-tick", type=int, default=20_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sensor_tick.json"))
    args = parser.parse_args()
    results: dict = {
        "objects": args.objects,
        "max_objects_per_tick": args.max_objects_per_tick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test(temp_dir=tmp) as instance:
        root = Path(tmp)
        (root / "input").mkdir()
        t = time.perf_counter()
        make_objects(root / "input", args.objects)
        print(f"created {args.objects} objects in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        bounded = write_yaml(root, args.max_objects_per_tick)

        seconds, first = tick(bounded, instance, None)
        results["first_tick"] = {
            "seconds": round(seconds, 3),
            "run_requests": len(first.run_requests),
            "new_partitions": sum(len(r.partition_keys) for r in first.dynamic_partitions_requests),
        }
        print(f"first tick: {seconds:.2f}s, {len(first.run_requests)} run requests", file=sys.stderr)

        results["claim_all_setup_seconds"] = round(claim_everything(root, instance), 3)
        cursor, times, passes = None, [], 0
        while passes == 0:
            seconds, result = tick(bounded, instance, cursor)
            assert not result.run_requests, "steady state must request nothing"
            times.append(seconds)
            cursor = result.cursor
            passes = json.loads(cursor or "{}").get("passes", 0)
        results["steady_pass"] = {
            "ticks": len(times),
            "max_tick_seconds": round(max(times), 3),
            "mean_tick_seconds": round(sum(times) / len(times), 3),
            "pass_seconds": round(sum(times), 3),
        }
        print(f"steady pass: {len(times)} ticks, max {max(times):.2f}s", file=sys.stderr)

        seconds, result = tick(write_yaml(root, args.objects), instance, None)
        assert not result.run_requests
        results["unbounded_tick"] = {"seconds": round(seconds, 3)}
        print(f"unbounded tick over {args.objects} objects: {seconds:.2f}s", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
