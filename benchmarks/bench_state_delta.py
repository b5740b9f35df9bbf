"""The same question as bench_state.py, asked of Delta Lake (delta-rs): what does opening and reading
a table cost after 10 and after 1,000 commits (appends of `--rows` processed-like rows each)?

Not a dependency of the project: run it in a scratch environment with `pip install deltalake polars`
(measured with deltalake 1.6.6, polars 2.1.0). It counts the files the load opens by listing the
`_delta_log` folder the way the reader resolves a version: the newest checkpoint (`_last_checkpoint`
names it) plus the JSON commits after it. Writes benchmarks/results/state_delta[-quick].json.

Usage: python benchmarks/bench_state_delta.py [--quick] [--commits 1000] [--checkpoint-every 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable, write_deltalake
from deltalake import __version__ as deltalake_version

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, cpu_model  # noqa: E402


def build(path: Path, commits: int, rows: int, checkpoint_every: int) -> float:
    start = time.perf_counter()
    for i in range(commits):
        df = pl.DataFrame({
            "raw_key": [f"day{i:05d}/clip_{j:03d}.mp4" for j in range(rows)], "raw_version": ["1-1"] * rows,
            "raw_size": [1000] * rows, "media_type": ["VIDEOS"] * rows, "status": ["ok"] * rows,
            "error": [""] * rows, "frames": [3] * rows, "tag": [f"t{i + 1:05d}"] * rows,
        })
        write_deltalake(str(path), df.to_arrow(), mode="append")
        if checkpoint_every and (i + 1) % checkpoint_every == 0:
            DeltaTable(str(path)).create_checkpoint()
    return time.perf_counter() - start


def files_read(path: Path) -> int:
    log = path / "_delta_log"
    last = log / "_last_checkpoint"
    version = json.loads(last.read_text())["version"] if last.exists() else -1
    after = [p for p in log.glob("*.json") if int(p.stem) > version]
    checkpoint = list(log.glob(f"{version:020d}.checkpoint*.parquet")) if version >= 0 else []
    return len(after) + len(checkpoint) + (1 if last.exists() else 0)


def measure(path: Path, repeats: int) -> dict[str, Any]:
    times_open, times_read = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        table = DeltaTable(str(path))
        opened = time.perf_counter()
        height = pl.from_arrow(table.to_pyarrow_table()).height
        times_open.append(opened - start)
        times_read.append(time.perf_counter() - start)
    return {"versions": table.version() + 1, "rows": height, "log_files_read": files_read(path),
            "data_files": len(table.file_uris()), "open_seconds_median": statistics.median(times_open[1:]),
            "open_and_read_seconds_median": statistics.median(times_read[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also create a checkpoint every N commits (0: delta-rs' own default only)")
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, args.commits):
            path = Path(tmp) / f"t{n}"
            built = build(path, n, args.rows, args.checkpoint_every)
            rows[str(n)] = {"build_seconds": round(built, 2), **measure(path, repeats)}
            print(n, json.dumps(rows[str(n)]))
    small, large = rows["10"], rows[str(args.commits)]
    summary = {
        "log_files_read_at_large": large["log_files_read"],
        "data_files_at_large": large["data_files"],
        "open_ratio": round(large["open_seconds_median"] / small["open_seconds_median"], 2),
        "open_and_read_ratio": round(large["open_and_read_seconds_median"] / small["open_and_read_seconds_median"], 2),
    }
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"state_delta{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({
        "benchmark": "state_delta", "command": "python benchmarks/bench_state_delta.py"
        + (" --quick" if args.quick else "") + (f" --checkpoint-every {args.checkpoint_every}"
                                                if args.checkpoint_every else ""),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_model": cpu_model(),
        "deltalake": deltalake_version, "polars": pl.__version__, "rows_per_commit": args.rows, "repeats": repeats,
        "rows": rows, "summary": summary,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
