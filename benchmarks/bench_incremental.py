"""Pay only for new data: run 2 of the demo scenario vs processing its 2 new videos alone.

Dataset A: 3 videos, run 1 (n_samples 100); then 2 new videos, run 2 (--use-datapool, n_samples 50).
Dataset B: only those 2 videos, one run (n_samples 50). Both through the `datapool` CLI in this process
(Dagster, a fresh DAGSTER_HOME), the model loaded once. Target: run 2 <= 1.2 x the run of B.

    python benchmarks/bench_incremental.py --quick    # ViT-S-32, 4 s videos
    python benchmarks/bench_incremental.py            # ViT-B-32, the demo's 8 s videos
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks._common import datasets_yaml, write_result  # noqa: E402
from datapool_pipeline.demo import make_videos  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> float:
    from datapool_pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"datapool {' '.join(args)} failed ({code}): {err.getvalue()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    model = "ViT-S-32" if args.quick else "ViT-B-32"
    seconds = 4.0 if args.quick else 8.0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
        a_in, b_in = tmp / "a" / "in", tmp / "b" / "in"
        a_in.mkdir(parents=True)
        b_in.mkdir(parents=True)
        make_videos(a_in, ["v1.mp4", "v2.mp4", "v3.mp4"], first_source=0, seconds=seconds)
        make_videos(b_in, ["v4.mp4", "v5.mp4"], first_source=3, seconds=seconds)
        a_yaml = datasets_yaml(tmp / "a.yaml", "pool-a", a_in, tmp / "a" / "out", model)
        b_yaml = datasets_yaml(tmp / "b.yaml", "alone-b", b_in, tmp / "b" / "out", model)
        run1 = cli("--datasets", str(a_yaml), "run", "pool-a", "--n-samples", "100")
        for name in ("v4.mp4", "v5.mp4"):
            shutil.copy(b_in / name, a_in / name)
        alone = cli("--datasets", str(b_yaml), "run", "alone-b", "--n-samples", "50")
        run2 = cli("--datasets", str(a_yaml), "run", "pool-a", "--use-datapool", "--n-samples", "50")
    ratio = run2 / alone
    print(f"run 1 (3 videos): {run1:.1f}s; run 2 (2 new on top of 3): {run2:.1f}s; 2 videos alone: {alone:.1f}s; "
          f"ratio {ratio:.2f} (target <= 1.2)")
    write_result("incremental", args.quick, {
        "model": model, "video_seconds": seconds, "run1_seconds": run1, "run2_seconds": run2,
        "alone_seconds": alone, "ratio_run2_over_alone": ratio, "target_met": ratio <= 1.2,
    })


if __name__ == "__main__":
    main()
